# The project's default strategy: Mitogen's `mitogen_linear` when the mitogen
# package is installed (requirements.txt), otherwise Ansible's `linear` with a
# warning. Same task order and semantics as linear; Mitogen keeps one Python
# interpreter per host and sends modules over it instead of copying and
# starting each one (README: Figures). Mitogen takes over the connections it
# knows by their short names (docker, ssh, local); the inventories use those.
# Plays declared `connection: local` (Molecule's driver playbooks) run with
# plain linear: nothing to gain there, and Mitogen's async jobs lose some
# collection modules' results (community.docker.docker_container).
# ANSIBLE_STRATEGY=linear goes back to plain Ansible for one run.
from __future__ import annotations

DOCUMENTATION = """
name: stack_linear
short_description: linear, executed by Mitogen when it is installed
description:
  - Mitogen's mitogen_linear strategy when the mitogen package can be
    imported; Ansible's linear strategy with a warning otherwise.
author: ansible-stack
"""

from ansible.plugins.loader import strategy_loader
from ansible.utils.display import Display

try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except ImportError as exc:  # mitogen missing or incompatible with this ansible-core
    Display().warning(
        f"stack_linear: Mitogen is not available ({exc}); running with the linear strategy. "
        "Install requirements.txt for the faster runs."
    )
    StrategyModule = strategy_loader.get("linear", class_only=True)
else:
    _Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

    class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):  # type: ignore[no-redef]
        """mitogen_linear, loaded from the mitogen package wherever it is installed."""

        def run(self, iterator, play_context, result=0):
            if getattr(iterator._play, "connection", None) == "local":
                return _Linear.run(self, iterator, play_context)
            return super().run(iterator, play_context, result)
