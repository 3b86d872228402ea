"""KFP v2 components: thin wrappers that run one library stage each.

`EFM_IMAGE` is the container image every component runs in on Vertex AI (built by
infra/cloudbuild.yaml from infra/Dockerfile, with the project installed from the lock). It is
read when `efm.components.stages` is imported, i.e. at pipeline compile time, so
`EFM_IMAGE=us-docker.pkg.dev/my-project/efm/efm:<sha> python -m efm.pipelines.experiment ...`
pins a build into the compiled YAML. Local runs (kfp.local.SubprocessRunner) ignore the image
and use the current interpreter.
"""

import os

DEFAULT_IMAGE = "us-docker.pkg.dev/PROJECT/efm/efm:latest"
EFM_IMAGE = os.environ.get("EFM_IMAGE", DEFAULT_IMAGE)
