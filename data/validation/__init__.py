"""Data validation of RLDS datasets with TensorFlow Data Validation (TFX's StatisticsGen,
SchemaGen and ExampleValidator roles), before any training.

An RLDS dataset is two tables for TFDV, each one Arrow row per element:

  steps     one row per RLDS step: `action`, every non-image `observation/<k>`,
            `observation_extras/<k>`, `action_extras/<k>`, `reward`, `discount`, the flags
            `is_first/is_last/is_terminal` (0/1), `language_instruction`; a camera image
            `observation/<k>` is summarised, not read per pixel, as `<k>/format` ("png",
            "jpeg"), `<k>/height`, `<k>/width`, `<k>/channels` and `<k>/bytes` (from the
            encoded headers; nothing is decoded)
  episodes  one row per episode: `length` (actions, T), `success`, `instruction`,
            `instruction_bytes`, `return`, `is_first_count`, `is_last_count`,
            `is_terminal_count`, `optimal_length` and `goal/<k>` where the data has them

Statistics are computed by TFDV on Apache Beam: the DirectRunner in-process by default, the
DataflowRunner (`ValidationConfig.runner`) for datasets that outgrow one machine; the dataset
is read shard by shard (TFDS files), so the work splits across Beam workers.

Each domain has a reviewed schema per table in `schemas/<domain>/` (kept in the repository, so
a change to a domain's data shows as a diff) with the ranges that matter (actions within the
tokenizer's range, flags boolean, episodes non-empty, an instruction present), drift
comparators against the domain's reference statistics (also in `schemas/<domain>/`), and skew
comparators for the training split against the validation split. `infer_domain_schema`
regenerates them (`efm data validate PATH --domain D --write-schema`). A domain with a second
observation mode has a second schema (`schema_name`: Aloha with cameras, `aloha-insertion-cameras`).

An anomaly is named `<table>:<feature>:<TYPE>` (TYPE from TFDV's AnomalyInfo.Type), e.g.
`steps:action:FLOAT_TYPE_BIG_FLOAT`; `ValidationConfig.accept` lists accepted ones
(`steps:action` accepts every anomaly of that feature, `*` all), which are reported but do not
fail the gate.

Modules: `tables` (RLDS to the two Arrow tables), `statistics` (TFDV on Beam), `schemas`
(the reviewed schemas, their inference), `gate` (anomalies, the report decided on), `report` (the
pages), `run` (the step and the CLI's entry points).
"""

from efm.data.validation.gate import (
                                     Anomaly,
                                     ValidationError,
                                     ValidationReport,
                                     is_accepted,
                                     validate_statistics,
)
from efm.data.validation.report import FACETS_HTML, REPORT_HTML, REPORT_JSON, write_report
from efm.data.validation.run import (
                                     beam_settings,
                                     infer_and_write_schema,
                                     on_dataflow_of,
                                     run_validation,
                                     validate_dataset,
)
from efm.data.validation.schemas import (
                                     SchemaRules,
                                     infer_domain_schema,
                                     load_reference,
                                     load_schemas,
                                     schema_name,
                                     write_schemas,
)
from efm.data.validation.statistics import (
                                     GCS_FUSE_PREFIX,
                                     BeamSettings,
                                     beam_options,
                                     branch_slices,
                                     compute_statistics,
)
from efm.data.validation.tables import ALL, TABLES, read_chunks

__all__ = [
    "ALL", "FACETS_HTML", "GCS_FUSE_PREFIX", "REPORT_HTML", "REPORT_JSON", "TABLES", "Anomaly", "BeamSettings",
    "SchemaRules", "ValidationError", "ValidationReport", "beam_options", "beam_settings", "branch_slices",
    "compute_statistics", "infer_and_write_schema", "infer_domain_schema", "is_accepted",
    "load_reference", "load_schemas", "on_dataflow_of", "read_chunks", "run_validation", "schema_name", "validate_dataset",
    "validate_statistics", "write_report", "write_schemas",
]
