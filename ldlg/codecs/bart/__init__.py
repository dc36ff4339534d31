"""The frozen language autoencoder (Flax BART): load, encode, beam-search decode, offline pretraining."""
