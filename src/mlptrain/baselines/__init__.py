"""Models to measure the trainer against, each in the comparison protocol of mlptrain.compare:

- numpy_mlp: the same MLP in NumPy, backprop and SGD/Adam/AdamW written out by hand;
- nielsen_network: Nielsen's network.py design, the example to copy for a model of your own;
- centroid: the nearest class mean.
"""
