"""Thin mitmproxy addons over the egress core (installed as ``egress.addons``).

Each module is also loadable on its own into a plain mitmdump:
``mitmdump -s addons/egress_addons.py --set egress_config=config/egress.yaml``.
"""
