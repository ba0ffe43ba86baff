"""The configs Hydra composes (pkg://mlptrain.conf): carried inside the package, so an installed mlptrain finds them
from any directory. The checkout's conf/ is a link to this folder."""
