"""One module per backend; each has DEVICES, available(), the ops it implements and,
optionally, ``supports(call)`` (a :class:`flex.ops.Call` description) for calls it accepts."""
