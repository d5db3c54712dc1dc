"""Generation: any local Hugging Face causal LM, watermarked per request, batched.

`distillguard.engine.corpus` and `distillguard.engine.train` build the embedded default model.
"""
