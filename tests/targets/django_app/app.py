"""A one-file Django project (settings, URLs and the WSGI application) for tests/django.rs.

Run as `gunicorn --chdir tests/targets/django_app app:application`.
"""
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="memmon-test-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF="urls",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
