"""Private APIs VokaFlow relies on: each check fails loudly when a dependency changes them."""

from drf_spectacular.openapi import AutoSchema


def test_drf_spectacular_still_has_the_methods_our_schema_overrides():
    # vokaflow.schema.VokaFlowAutoSchema overrides these underscore methods and calls
    # _get_response_for_code; a rename would silently drop the error answers from the schema.
    for name in ("_map_basic_serializer", "_get_response_bodies", "_get_response_for_code"):
        assert callable(getattr(AutoSchema, name, None)), f"drf-spectacular AutoSchema.{name} is gone"
