"""The language model: the decoder whose chunked prefill a serving step runs after the encoder."""
