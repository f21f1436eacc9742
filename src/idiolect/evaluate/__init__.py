"""Evaluation: model-free style scores of sets of texts, and their calibration.

- ``idiolect.evaluate.stylometry``: style profiles, fingerprint distance (lower is better)
- ``idiolect.evaluate.authorship``: a cohort classifier's P(user | text) (higher is better;
  chance is 1/K for a cohort of K users)
- ``idiolect.evaluate.novelty``: how much generated text copies training messages
- ``idiolect.evaluate.calibrate``: ceiling (own real text) and floor (other users' text)

Import from the submodules (two of them share their name with their main function, so this
package re-exports nothing and importing it costs nothing). Definitions: docs/metrics.md.
"""
