"""Triton-free core of the Llama-3.1-Nemotron-Nano-VL serving stack.

One module per stage of a request: checkpoint loading, image decoding, tiling, prompt building, vision
encoder, engine, detokenization, and the error family the Triton models and the frontend map once each.
"""
