"""One module per backend; each has DEVICES, available() and the ops it implements."""
