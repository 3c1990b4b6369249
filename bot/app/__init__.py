"""The running bot: wiring, lifecycle, the background duties and their supervision."""
