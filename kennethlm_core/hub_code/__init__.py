"""The remote code of an exported KennethLM model (``klm export``): these two files are copied
into the model folder, where ``transformers`` loads them with ``trust_remote_code=True``."""
