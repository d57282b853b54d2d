"""Two views: one keeps a record of every request in a module-level list (a leak), one builds
a report of the same size and lets it go (churn)."""
from django.http import HttpResponse

RECORD_BYTES = 4000
audit_log = []


def keep_record(request):
    record = bytearray(RECORD_BYTES)
    record[:len(request.path)] = request.path.encode()
    audit_log.append(record)


def audit_view(request):
    keep_record(request)
    return HttpResponse(f"{len(audit_log)} records kept\n")


def build_report(request):
    report = bytearray(RECORD_BYTES)
    report[:len(request.path)] = request.path.encode()
    return len(report)


def report_view(request):
    return HttpResponse(f"{build_report(request)} bytes reported\n")
