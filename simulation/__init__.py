"""The wiring of ClientApp and ServerApp (Flower's simulation engine) and the orchestration of a training run:
privacy planning, run directories, resume. Above ``clients/`` and ``strategy/``, which never import it."""
