from django.urls import path

import views

urlpatterns = [
    path("audit", views.audit_view),
    path("report", views.report_view),
]
