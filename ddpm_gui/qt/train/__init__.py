"""The Train tab's pieces, put together by ddpm_gui.qt.panels.train_panel: the settings form (form.py, its
rows generated in fields.py), what a run shows (run_view.py), the model's size (model_size.py), the
quality check (quality.py) and what runs in the worker threads (jobs.py)."""
