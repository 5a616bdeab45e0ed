"""``flex serve``: a live web demo that streams a FLEX video to the browser while it is generated.

The model is loaded once (:class:`~flex.serve.engine.Engine`); one browser at a time owns it
through a WebSocket (:mod:`flex.serve.app`); a worker thread per connection runs the pipeline,
decodes each chunk and sends its frames as JPEG images (:class:`~flex.serve.session.Session`).
The page takes prompt switches, stop / restart and save requests (:mod:`flex.serve.protocol`).
"""
