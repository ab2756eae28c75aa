"""Many runs: `roli sweep` (a grid of recipes run as resumable, sharded cells, with cost estimates) and `roli tune`
(the learning rate by successive halving). Above roli.training, which knows nothing of it."""
