-- Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d).
-- MLflow's backend store is the database POSTGRES_DB (mlflow); the Optuna studies get their
-- own database, because both keep an `alembic_version` table of their own.
CREATE DATABASE optuna;
