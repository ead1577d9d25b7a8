"""The operator's "Bandits" page, shown inside the Airflow UI (:mod:`ops.airflow_plugin`)."""
