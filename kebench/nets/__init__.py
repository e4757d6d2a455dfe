"""Networks and network surgery: building models (models, archs: kebench's timm-registered networks),
the channel graph (trace, channels), KE's split masks (split), physical sub-networks (slim), pruning
(prune), cost (parameters and FLOPs) and the evolution toolbox (genome, morph, pattern).

A new network goes in `archs.py` (registered with timm), or in an out-of-tree package.
"""
