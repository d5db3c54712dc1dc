"""Radioactivity tests: did a suspect model learn from our watermarked outputs?

Following Sander et al., "Watermarking Makes Language Models Radioactive" (NeurIPS 2024):

- Black-box: the suspect's outputs to our prompts are scored like any text, with two
  precautions. Each (context, token) tuple counts once across all outputs. Tuples whose
  context also occurs in the prompts are dropped: a watermarked prompt echoed back would
  otherwise make a clean model look radioactive.
- Open weights: our logged watermarked outputs are fed to the suspect (teacher forcing). At
  each position the suspect's top-1 next-token prediction is scored under each key. A model
  that learned the watermark predicts green tokens more often than gamma. Each distinct
  (context, prediction) pair counts once; the p-value is the exact binomial tail, as for
  text. Two statistics read more of the logits, with Chernoff-bound p-values (valid, a little
  conservative): the probability mass the suspect puts on green tokens, and, given a
  reference model, the shift of that mass away from the reference's. The shift is the
  strongest when the reference is close to where the suspect started (its public base): it
  cancels what both models would predict anyway and keeps what the suspect learned since.
  Predictions of a tuple that already occurred earlier in the model's input are not scored:
  the text is watermarked and a model can copy from its input.

Under the null hypothesis (the suspect never learned from text watermarked with that key),
each scored tuple is green with probability gamma, independently, because the keyed hash of
distinct (context, token) pairs is independent of anything the suspect computes. Attribution
across tenants uses Holm-Bonferroni, as the detector does.

Only left-hash green-list schemes are supported: the tests read green lists, and a left-hash
context is what a student can learn.

Modules: `scoring` (the result, packed tuples, the exact binomial test), `teacher_forcing`
(running local models over token windows), `black_box` and `open_weights` (the tests).
"""

from __future__ import annotations

from distillguard.forensics.radioactivity.black_box import black_box_focused_test, black_box_test
from distillguard.forensics.radioactivity.open_weights import OpenWeightsResults, open_weights_test
from distillguard.forensics.radioactivity.scoring import RadioactivityResult

__all__ = [
    "OpenWeightsResults",
    "RadioactivityResult",
    "black_box_focused_test",
    "black_box_test",
    "open_weights_test",
]
