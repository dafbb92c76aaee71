"""`python -m zoo_cli` (torchrun -m zoo_cli finetune ...): the `zoo` command."""

import sys

from zoo_cli import main

sys.exit(main())
