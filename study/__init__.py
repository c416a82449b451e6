"""The study: a grid of cells (``study.grid``), each trained and attacked once, and its runner (``study.runner``)."""
