"""An OpenAI-compatible server on Ray Serve whose precision adapts to load (docs/serve.md).

Needs the ``[serve]`` extra (ray[serve], prometheus-client, jinja2); the engine itself (:mod:`.engine`)
needs only the light runtime.
"""
