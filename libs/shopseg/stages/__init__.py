"""One module per pipeline stage, each with `run(ctx: StageContext)`.

A stage is the body of a job: it reads its input tables, calls library
functions (which never touch storage), writes its output tables and logs to
MLflow. `jobs/<stage>.py` and the `shopseg` CLI both run these.
"""
