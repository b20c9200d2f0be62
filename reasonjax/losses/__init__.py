"""Pure loss functions: arrays in, per-token or per-sequence values out; reductions in `tokens`.

Submodules: `tokens` (token log-probs, masked reductions), `sft` (cross-entropy), `preference`
(DPO family), `reward` (ORM, PRM, HRM, Bradley-Terry). Import them directly:
`from reasonjax.losses import preference`.
"""
