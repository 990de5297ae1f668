"""The flatplug plugin (entry point ``torchattacks`` in group ``flatplug``): registers the attacks.

torchattacks is imported only when the attack registry is first asked for, so loading flatplug's
plugins for measures or sources does not pay for it.
"""

from __future__ import annotations

from flatplug import hookimpl


@hookimpl
def flatplug_register_attacks(register):
    from .catalog import ATTACK_INFO, attack_factories

    for name, factory in attack_factories().items():
        register(name, factory, **ATTACK_INFO.get(name, {}))
