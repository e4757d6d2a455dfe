"""Networks and network surgery: building models (models, archs: kebench's timm-registered networks),
the channel graph (trace, channels), KE's split masks (split), physical sub-networks (slim), pruning
(prune), cost (parameters and FLOPs) and the evolution toolbox (genome, morph, pattern).

A new network is a function (num_classes, in_chans, **kwargs) -> nn.Module in a module here (or out of
tree), named under registry.yaml's `networks:` or by a `kebench.networks` entry point (models.NETWORKS;
docs/extending.md).
"""
