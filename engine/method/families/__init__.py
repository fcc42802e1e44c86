"""One folder per model family: what each base model does its own way (text encoding and phrase tokens,
the denoiser and where its attention processors go, scheduler and inversion, VAE, control). What is the
method for every model (attention.py, layout.py, passes.py) stays one level up; a family never imports
another."""
