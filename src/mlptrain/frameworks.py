"""Every private or undocumented framework API that mlptrain uses, in one place, each with the versions it was
tested on: an upgrade that breaks one breaks here, and a test that imports this module says so.

Tested with hydra-core 1.3.2 and 1.3.8, lightning 2.6.6, torch 2.14.1.
"""

# hydra-core 1.3.2-1.3.8: the sweeper `-m` uses by default. hydra_plugins.mlptrain_population's sweeper is this
# one with a cheaper check of a sweep's configs (composing each of 1,000 jobs' takes Hydra 100 s).
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf

__all__ = ["BasicSweeper", "BasicSweeperConf"]
