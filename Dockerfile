# One image for every panelflow service: the same requirements.txt lock as `make run`.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 AIRFLOW_HOME=/opt/airflow PYTHONPATH=/opt/panelflow/plugins PANELFLOW_ROOT=/opt/panelflow
WORKDIR /opt/panelflow
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
