# One image for every VokaFlow process (web, workers, beat, Flower); the command picks the role.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput -v 0 \
    && useradd --system --home /app vokaflow && mkdir -p /app/.run && chown -R vokaflow /app/.run
USER vokaflow
EXPOSE 8000 5555
CMD ["gunicorn", "vokaflow.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "--access-logfile", "-"]
