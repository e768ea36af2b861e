"""Rule-Based Rewards for safety tuning (DESIGN.md §6, docs/rbr.md).

spec (YAML behaviour spec) -> grader (proposition probabilities) -> weights (linear reward over
propositions and class probabilities) -> reward (R_rm + w·φ) -> ppo; ``python -m omni.align`` runs
the loop, :mod:`omni.align.trl` exposes the reward to TRL.
"""
