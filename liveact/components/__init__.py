"""What a checkpoint folder is built from besides the DiT: text, image and audio encoders, the
autoencoders, the audio tempo change, and the components.json registry of self-contained folders."""
