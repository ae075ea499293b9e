"""Simulated Byzantine clients (ALGORITHMS.md section 3) by name.

The contract (two hooks: ``poison`` the data, ``forge`` the messages) and
who is Byzantine are in ``attacks.base``; each attack lives in its module
and is registered here.
"""
from fedround.attacks.base import (Attack, byzantine_count, byzantine_mask,
                                   no_attack)
from fedround.registry import Registry, import_modules

# Binds noise, omniscient, poisoning, rankings and any new module here.
import_modules(__name__, __path__)

ATTACKS = Registry('attack')
ATTACKS.register('none')(no_attack)
ATTACKS.register('sign_flip')(omniscient.sign_flip)
ATTACKS.register('ipm')(omniscient.ipm)
ATTACKS.register('alie')(omniscient.alie)
ATTACKS.register('optimal_ipm')(omniscient.optimal_ipm)
ATTACKS.register('optimal_alie')(omniscient.optimal_alie)
ATTACKS.register('gaussian')(noise.gaussian)
ATTACKS.register('inf')(noise.inf)
ATTACKS.register('nan')(noise.nan)
ATTACKS.register('mimic')(omniscient.mimic)
ATTACKS.register('label_flip')(poisoning.label_flip)
ATTACKS.register('reverse_ranking')(rankings.reverse_ranking)
ATTACKS.register('boosting')(boosting.boosting)
