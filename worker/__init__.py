"""seedfarm worker: everything that touches torch and diffusers."""
