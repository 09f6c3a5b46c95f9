"""``python -m zoo``: the ``zoo`` command.

Under torchrun, ``torchrun --nproc_per_node N -m zoo adapt ...`` is the distributed form (a
console script such as a pyenv shim is a shell script that torchrun cannot run as Python).
"""

import sys

from zoo.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
