"""The demo model that ships with the app (demo.safetensors, described by demo.json); the package only
holds the data. scripts/train_demo_model.py rebuilds it; ddpm_gui.engine.demo loads it."""
