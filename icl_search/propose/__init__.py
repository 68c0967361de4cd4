"""Proposed contexts: an LM writes new preambles and restyles pool examples, and the study
searches over them in rounds.

    proposer = make_proposer("dspy:openai/gpt-4o-mini", cache=Cache())
    run_rounds(load_config("studies/gpu-7b.toml"))     # the config's [propose] section
"""

from icl_search.propose.checks import LeakGuard, PreambleCheck, RestyleCheck, key_token_recall
from icl_search.propose.preambles import Brief, Proposal, RoundProposals, propose_preambles
from icl_search.propose.proposer import Proposer, make_proposer
from icl_search.propose.restyle import RestyleResult, restyle_pool
from icl_search.propose.rounds import round_config, round_name, run_rounds
from icl_search.propose.tables import proposals_table, rounds_table
from icl_search.proposer_spec import ProposeError, ProposerSpec, parse_proposer_spec

__all__ = [
    "Brief", "LeakGuard", "PreambleCheck", "Proposal", "ProposeError", "Proposer",
    "ProposerSpec", "RestyleCheck", "RestyleResult", "RoundProposals", "key_token_recall",
    "make_proposer", "parse_proposer_spec", "proposals_table", "propose_preambles",
    "restyle_pool", "round_config", "round_name", "rounds_table", "run_rounds",
]
