"""Dataset facts as plain numbers, for what must know a run's size without loading its data (the sweep's cost
estimates): split sizes and native resolutions. No torch here, and no @DATASETS entry: importing the data registry
(which imports every module of roli.data) registers nothing from this file."""

# The paper's split sizes (protocol §4): train, val, test.
PAPER_SIZES = {"cifar10": (45_000, 5_000, 10_000), "cifar100": (45_000, 5_000, 10_000),
               "caltech256": (14_649, 771, 15_187), "cub200": (5_394, 600, 5_794),
               "stanford_dogs": (10_800, 1_200, 8_580)}
# The shipped copies (no data.root): train+val pool and test; val = round(pool x data.val_fraction).
SHIPPED_SIZES = {"mnist": (8_000, 2_000), "fashion_mnist": (10_000, 2_000), "synthetic": (600, 200)}
OFFICIAL_SIZES = {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000)}  # the idx files in data.root
NATIVE_RES = {"mnist": 28, "fashion_mnist": 28, "synthetic": 28, "cifar10": 32, "cifar100": 32}
