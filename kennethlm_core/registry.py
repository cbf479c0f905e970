"""The ledger module's old name: it is ``kennethlm_core.ledger`` now (recipes' results, the
record chain, the rendered tables), so that "registry" means only the component registry
(``kennethlm_core.plugins.Registry``). Importing this name gives that module, so code written
before the rename keeps working."""

import sys

from kennethlm_core import ledger

sys.modules[__name__] = ledger
