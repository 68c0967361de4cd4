"""The names of the trial and study user attributes a study writes: one vocabulary, so the
runner, the confirmation, the report and the export read the same keys.

Trial attributes (`trial.user_attrs`):"""

#: the trial's context (`TrialSpec.to_dict`)
SPEC = "spec"
#: "baseline", "enqueued-N" for the reference configurations
ROLE = "role"
#: query id -> the judge's per-query score (floored where hygiene failed, by default)
PER_QUERY = "per_query"
#: query id -> answer length in words
LENGTHS = "lengths"
#: the trial's `HygieneCounts` (icl_search.hygiene) as a dict
HYGIENE = "hygiene"
#: whether answers failing hygiene were scored at the judge's floor (`[judge] hygiene_floor`)
HYGIENE_FLOOR = "hygiene_floor"

# Study attributes (`study.user_attrs`):
#: the confirmation plan (candidates, baselines, fingerprint, judges)
CONFIRM = "confirm"
