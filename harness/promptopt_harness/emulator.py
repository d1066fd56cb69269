"""An emulated Kubernetes API server for fast tests and the benchmark's request counting.

`KubernetesEmulator` is a subclass of kmock's emulator that behaves like kube-apiserver where kopf, the
kubernetes client, the local kubelet and kubectl notice the difference, and refuses what it refuses: object
metadata (uid, generation, resourceVersion, ...) and its validation (names, labels, annotations up to 256 KiB),
status codes and Status bodies, field validation (Strict refuses unknown fields, Warn prunes them with a
warning) and CRD admission (pruning, defaults, schema, CEL), the request and etcd size limits,
resourceVersion-aware watches, label and field selectors, status subresources, optimistic locking, finalizers,
graceful pod deletion and pod binding, discovery, /openapi/v3 and server-side Tables, and the protobuf bodies of
`kubectl create`. Custom resources are declared from CRD objects only.

It is an API server without a control plane and without security: no controllers (no garbage collection, no
namespace deletion), no authentication or authorization, no ServiceAccount tokens, no server-side apply and no
dry runs (refused rather than approximated). tests/harness/test_differential.py holds it to the real server.

`EmulatedCluster` runs it on a free localhost port in a background thread and writes a kubeconfig;
``python -m promptopt_harness.emulator`` runs it in the foreground for shell scripts.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import copy
import contextlib
import dataclasses
import datetime
import functools
import json
import pathlib
import random
import re
import signal
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from jsonpath_ng.ext import parse as parse_jsonpath
from typing_extensions import override

from promptopt.api.crd import custom_resource_definition
from promptopt_harness.admission import admit, prune
from promptopt_harness.client import ClusterApi

STANDARD_VERBS = frozenset({'create', 'delete', 'get', 'list', 'patch', 'update', 'watch'})
SUBRESOURCE_VERBS = ['get', 'patch', 'update']
JSON_HEADERS = {'Content-Type': 'application/json'}
TERMINAL_POD_PHASES = frozenset({'Succeeded', 'Failed'})
DEFAULT_POD_GRACE_SECONDS = 30
RECENT_EVENTS_PER_RESOURCE = 10_000  # older resourceVersions get "410 Gone", as after etcd compaction
NAME_SUFFIX_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789'  # the apiserver's generateName alphabet

# The limits of a real control plane, measured against kube-apiserver 1.33 and etcd 3.5 with their defaults.
MAX_REQUEST_BODY_BYTES = 3 * 1024 * 1024  # larger bodies: 413 RequestEntityTooLarge
ETCD_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's --max-request-bytes: "etcdserver: request is too large"
ETCD_CLIENT_MAX_SEND_BYTES = 2 * 1024 * 1024  # the apiserver's etcd client refuses larger messages itself
ETCD_PUT_OVERHEAD_BYTES = 80  # what a put adds to the key and the stored object
MAX_ANNOTATIONS_BYTES = 256 * 1024  # keys and values together
FIELD_VALIDATIONS = ('', 'Ignore', 'Strict', 'Warn')  # '' is Warn
OBJECT_META_FIELDS = frozenset({
    'name', 'generateName', 'namespace', 'selfLink', 'uid', 'resourceVersion', 'generation', 'creationTimestamp',
    'deletionTimestamp', 'deletionGracePeriodSeconds', 'labels', 'annotations', 'ownerReferences', 'finalizers',
    'managedFields'})

NAMESPACES = kmock.resource('', 'v1', 'namespaces')
PODS = kmock.resource('', 'v1', 'pods')
SECRETS = kmock.resource('', 'v1', 'secrets')
EVENTS = kmock.resource('', 'v1', 'events')
CRDS = kmock.resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions')


# ------------------------------------------------------------------------------------------------
# Errors as the API server reports them.

def api_error(code: int, reason: str | None, message: str, **details: Any) -> kmock.KubernetesError:
    """A Status error; empty details are left out, as the real server leaves them out (``group`` of core kinds)."""
    details = {key: value for key, value in details.items() if value not in (None, '')}
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details or None)


def invalid(kind: str, group: str, name: str, problems: list[tuple[str, str, str]]) -> kmock.KubernetesError:
    """422 Invalid with one cause per (field, reason, message), as kube-apiserver words it (kubectl lists them)."""
    lines = [f'{field}: {message}' for field, _, message in problems]
    summary = lines[0] if len(lines) == 1 else f"[{', '.join(lines)}]"
    qualified = f'{kind}.{group}' if group else kind
    causes = [{'reason': reason, 'message': message, 'field': field} for field, reason, message in problems]
    return api_error(422, 'Invalid', f'{qualified} "{name}" is invalid: {summary}', name=name, group=group, kind=kind,
                     causes=causes)


def resource_label(resource: kmock.resource) -> str:
    """How the API server names a resource in messages: ``pods``, ``jobs.batch``."""
    return f'{resource.plural}.{resource.group}' if resource.group else str(resource.plural)


def not_found(resource: kmock.resource, name: str) -> kmock.KubernetesError:
    return api_error(404, 'NotFound', f'{resource_label(resource)} "{name}" not found',
                     name=name, group=resource.group, kind=resource.plural)


def conflict(resource: kmock.resource, name: str, why: str) -> kmock.KubernetesError:
    return api_error(409, 'Conflict', f'Operation cannot be fulfilled on {resource_label(resource)} "{name}": {why}',
                     name=name, group=resource.group, kind=resource.plural)


# ------------------------------------------------------------------------------------------------
# URLs.

@dataclasses.dataclass(frozen=True)
class ApiPath:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_api_path(path: str) -> ApiPath | None:
    """Parse a resource URL (not a discovery URL); ``/api/v1/namespaces/x`` is the namespace x."""
    parts = path.strip('/').split('/')
    if parts[0] == 'api' and len(parts) >= 3:
        group, version, rest = '', parts[1], parts[2:]
    elif parts[0] == 'apis' and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    namespace_own_subresource = group == '' and len(rest) == 3 and rest[2] in {'status', 'finalize'}
    if rest[0] == 'namespaces' and len(rest) >= 3 and not namespace_own_subresource:
        namespace, rest = rest[1], rest[2:]
    name = rest[1] if len(rest) > 1 else None
    subresource = '/'.join(rest[2:]) or None
    return ApiPath(kmock.resource(group, version, rest[0]), namespace, name, subresource)


def guess_action(method: str, path: ApiPath, params: Mapping[str, str]) -> kmock.action | None:
    if method == 'GET' and params.get('watch') in {'true', '1'}:
        return kmock.action.WATCH
    match method, path.name:
        case 'GET', None:
            return kmock.action.LIST
        case 'GET', _:
            return kmock.action.FETCH
        case 'POST', None:
            return kmock.action.CREATE
        case 'POST', str() if path.subresource == 'binding':
            return kmock.action.CREATE
        case 'PATCH' | 'PUT', str():
            return kmock.action.UPDATE
        case 'DELETE', _:
            return kmock.action.DELETE
    return None


# ------------------------------------------------------------------------------------------------
# Selectors.

@dataclasses.dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: str  # '=', '!=', 'in', 'notin', 'exists', '!'
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        match self.operator:
            case '=' | 'in':
                return value in self.values
            case '!=' | 'notin':
                return value not in self.values
            case 'exists':
                return self.key in labels
            case _:
                return self.key not in labels


LABEL_REQUIREMENT = re.compile(
    r'\s*(?:(?P<absent>!)\s*(?P<akey>[^\s,=!()]+)'
    r'|(?P<skey>[^\s,=!()]+)\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)'
    r'|(?P<ekey>[^\s,=!()]+)\s*(?P<eqop>==|=|!=)\s*(?P<value>[^\s,=!()]*)'
    r'|(?P<key>[^\s,=!()]+))\s*(?:,|$)'
)


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h`` into requirements (all must match)."""
    requirements: list[LabelRequirement] = []
    position = 0
    while position < len(text):
        match = LABEL_REQUIREMENT.match(text, position)
        if not match or match.end() == position:
            raise api_error(400, 'BadRequest', f'unable to parse requirement: {text[position:]!r}')
        position = match.end()
        if match['absent']:
            requirements.append(LabelRequirement(match['akey'], '!'))
        elif match['setop']:
            values = frozenset(v.strip() for v in match['values'].split(',') if v.strip())
            requirements.append(LabelRequirement(match['skey'], match['setop'], values))
        elif match['eqop']:
            operator = '!=' if match['eqop'] == '!=' else '='
            requirements.append(LabelRequirement(match['ekey'], operator, frozenset({match['value']})))
        else:
            requirements.append(LabelRequirement(match['key'], 'exists'))
    return requirements


@dataclasses.dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    value: str
    negated: bool

    def matches(self, obj: Mapping[str, Any]) -> bool:
        found: Any = obj
        for key in self.path:
            found = found.get(key) if isinstance(found, Mapping) else None
        text = '' if found is None else str(found).lower() if isinstance(found, bool) else str(found)
        return (text == self.value) != self.negated


# Every resource selects on metadata.name and metadata.namespace; these kinds on a few more fields (the real
# server's field label conversions; custom resources declare none here).
SELECTABLE_FIELDS: dict[str, frozenset[str]] = {
    'pods': frozenset({'spec.nodeName', 'spec.restartPolicy', 'spec.schedulerName', 'spec.serviceAccountName',
                       'spec.hostNetwork', 'status.phase', 'status.podIP', 'status.nominatedNodeName'}),
    'events': frozenset({'involvedObject.kind', 'involvedObject.namespace', 'involvedObject.name',
                         'involvedObject.uid', 'involvedObject.apiVersion', 'involvedObject.resourceVersion',
                         'involvedObject.fieldPath', 'reason', 'reportingComponent', 'source', 'type'}),
    'secrets': frozenset({'type'}),
    'namespaces': frozenset({'status.phase'}),
    'nodes': frozenset({'spec.unschedulable'}),
}


def parse_field_selector(text: str, resource: kmock.resource) -> list[FieldRequirement]:
    """Parse ``metadata.name=x,spec.nodeName!=,status.phase==Running``; a field the resource cannot select on
    is a 400, as on the real server (which indexes only those)."""
    selectable = {'metadata.name', 'metadata.namespace'} | SELECTABLE_FIELDS.get(str(resource.plural), frozenset())
    requirements = []
    for term in filter(None, (t.strip() for t in text.split(','))):
        match = re.fullmatch(r'([^=!]+?)\s*(==|=|!=)\s*(.*)', term)
        if not match:
            raise api_error(400, 'BadRequest', f'invalid field selector: {term!r}')
        if match[1] not in selectable:
            raise api_error(400, 'BadRequest', f'field label not supported: {match[1]}')
        requirements.append(FieldRequirement(tuple(match[1].split('.')), match[3], match[2] == '!='))
    return requirements


# ------------------------------------------------------------------------------------------------
# Patches.

def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``None`` removes, everything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def without_patch_directives(patch: Any) -> Any:
    """Drop strategic-merge-patch directives (``$patch``, ``$setElementOrder/...``, ...).

    A strategic merge patch without its directives is served as a JSON merge patch: lists are
    replaced rather than merged by key, which is what kubectl's client-side apply needs here.
    """
    if isinstance(patch, Mapping):
        return {k: without_patch_directives(v) for k, v in patch.items() if not k.startswith('$')}
    if isinstance(patch, list):
        return [without_patch_directives(item) for item in patch]
    return patch


def apply_json_patch(target: Mapping[str, Any], operations: list[Any]) -> dict[str, Any]:
    """RFC 6902 JSON patch; a failed ``test`` op or a bad path is a 422 as on a real server."""
    try:
        return jsonpatch.apply_patch(copy.deepcopy(dict(target)), operations, in_place=True)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
        raise api_error(422, 'Invalid', 'the server rejected our request due to an error in our request') from None


# ------------------------------------------------------------------------------------------------
# Protobuf bodies: kubectl's `create namespace|secret|configmap|serviceaccount` send nothing else, and client-go
# falls back to JSON only after a 415 to a CBOR body, never to a protobuf one.

PROTOBUF_MAGIC = b'k8s\x00'  # then a runtime.Unknown: typeMeta (apiVersion, kind) and the object's bytes
# Field number: (JSON name, type) of k8s.io/api and apimachinery's generated.proto, the fields those commands set.
OBJECT_META_PROTO = {1: ('name', 'string'), 2: ('generateName', 'string'), 3: ('namespace', 'string'),
                     11: ('labels', 'map string'), 12: ('annotations', 'map string'),
                     14: ('finalizers', 'repeated string')}
PROTOBUF_KINDS: dict[str, dict[int, tuple[str, Any]]] = {
    'Namespace': {1: ('metadata', OBJECT_META_PROTO), 2: ('spec', {1: ('finalizers', 'repeated string')}),
                  3: ('status', {1: ('phase', 'string')})},
    'Secret': {1: ('metadata', OBJECT_META_PROTO), 2: ('data', 'map bytes'), 3: ('type', 'string'),
               4: ('stringData', 'map string'), 5: ('immutable', 'bool')},
    'ConfigMap': {1: ('metadata', OBJECT_META_PROTO), 2: ('data', 'map string'), 3: ('binaryData', 'map bytes'),
                  4: ('immutable', 'bool')},
    'ServiceAccount': {1: ('metadata', OBJECT_META_PROTO), 4: ('automountServiceAccountToken', 'bool')},
}


def protobuf_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """The (field number, varint or bytes) pairs of one protobuf message."""
    position = 0

    def varint() -> int:
        nonlocal position
        value = shift = 0
        while True:
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while position < len(data):
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            yield number, varint()
        elif wire_type == 2:
            length = varint()
            yield number, data[position:position + length]
            position += length
        else:  # fixed32/fixed64: no field of the decoded kinds has them
            raise api_error(415, 'UnsupportedMediaType', f'protobuf wire type {wire_type} is not decoded')


def decode_protobuf_message(data: bytes, fields: Mapping[int, tuple[str, Any]], kind: str) -> dict[str, Any]:
    """A message as JSON would carry it: empty values (which gogo-protobuf writes too) are left out, and a
    field the emulator does not decode is refused rather than dropped."""
    result: dict[str, Any] = {}
    for number, value in protobuf_fields(data):
        if number not in fields:
            if value in (0, b''):
                continue
            raise api_error(415, 'UnsupportedMediaType', f'field {number} of a protobuf {kind} is not decoded by '
                                                         'the emulator: send JSON')
        name, field_type = fields[number]
        if isinstance(field_type, Mapping):
            decoded = decode_protobuf_message(bytes(value), field_type, kind)
            if decoded:
                result[name] = decoded
        elif field_type == 'bool':
            result[name] = bool(value)
        elif field_type == 'string' and value:
            result[name] = bytes(value).decode()
        elif field_type == 'repeated string':
            result.setdefault(name, []).append(bytes(value).decode())
        elif field_type.startswith('map '):
            entry = dict(protobuf_fields(bytes(value)))
            item = bytes(entry.get(2, b''))
            text = base64.b64encode(item).decode() if field_type == 'map bytes' else item.decode()
            result.setdefault(name, {})[bytes(entry.get(1, b'')).decode()] = text
    return result


def decode_protobuf(body: bytes) -> dict[str, Any]:
    """A protobuf request body of one of PROTOBUF_KINDS as its JSON object, else 415."""
    unknown = dict(protobuf_fields(body.removeprefix(PROTOBUF_MAGIC))) if body.startswith(PROTOBUF_MAGIC) else {}
    type_meta = {number: bytes(value).decode() for number, value in
                 protobuf_fields(bytes(unknown.get(1, b'')))}
    kind = type_meta.get(2, '')
    if kind not in PROTOBUF_KINDS:
        raise api_error(415, 'UnsupportedMediaType', 'the body of the request was in an unknown format - accepted '
                        'media types include: application/json, application/yaml (and protobuf for '
                        f"{', '.join(PROTOBUF_KINDS)})")
    obj = decode_protobuf_message(bytes(unknown.get(2, b'')), PROTOBUF_KINDS[kind], kind)
    return {'apiVersion': type_meta.get(1, ''), 'kind': kind, **obj}


# ------------------------------------------------------------------------------------------------
# Object metadata, validated as for every kind.

DNS1123_LABEL = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?')
DNS1123_SUBDOMAIN = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')
QUALIFIED_NAME_PART = re.compile(r'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')
LABEL_VALUE = re.compile(r'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')
SUBDOMAIN_RULE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                  "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                  f"validation is '{DNS1123_SUBDOMAIN.pattern}')")
LABEL_RULE = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
              f"and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
              f"'{DNS1123_LABEL.pattern}')")
NAME_PART_RULE = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                  "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
                  f"is '{QUALIFIED_NAME_PART.pattern}')")
LABEL_VALUE_RULE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
                    f"'12345', regex used for validation is '{LABEL_VALUE.pattern}')")
Problem = tuple[str, str, str]  # (field, cause reason, message), as in a 422's causes


def name_problems(resource: kmock.resource, name: str) -> list[Problem]:
    """Namespaces are DNS labels, Events any path segment, everything else here a DNS subdomain."""
    invalid_value = f'Invalid value: "{name}": '
    if resource == EVENTS:
        bad = name in {'.', '..'} or '/' in name or '%' in name
        return [('metadata.name', 'FieldValueInvalid', invalid_value + "may not contain '/' or '%'")] if bad else []
    pattern, rule, limit = ((DNS1123_LABEL, LABEL_RULE, 63) if resource == NAMESPACES
                            else (DNS1123_SUBDOMAIN, SUBDOMAIN_RULE, 253))
    problems = []
    if len(name) > limit:
        problems.append(('metadata.name', 'FieldValueInvalid',
                         invalid_value + f'must be no more than {limit} characters'))
    if not pattern.fullmatch(name):
        problems.append(('metadata.name', 'FieldValueInvalid', invalid_value + rule))
    return problems


def key_problems(field: str, key: str) -> list[Problem]:
    """A label or annotation key: an optional DNS-subdomain prefix and a '/', then a name of at most 63."""
    prefix, _, name = key.rpartition('/')
    invalid_value = f'Invalid value: "{key}": '
    problems = []
    if prefix and not (len(prefix) <= 253 and DNS1123_SUBDOMAIN.fullmatch(prefix)):
        problems.append((field, 'FieldValueInvalid', invalid_value + f'prefix part {SUBDOMAIN_RULE}'))
    if len(name) > 63:
        problems.append((field, 'FieldValueInvalid', invalid_value + 'name part must be no more than 63 characters'))
    if not QUALIFIED_NAME_PART.fullmatch(name):
        problems.append((field, 'FieldValueInvalid', invalid_value + NAME_PART_RULE))
    return problems


def metadata_problems(resource: kmock.resource, meta: Mapping[str, Any]) -> list[Problem]:
    """What ObjectMeta validation refuses: the name, label keys and values, annotation keys and their total size."""
    problems = name_problems(resource, meta['name'])
    for key, value in (meta.get('labels') or {}).items():
        problems += key_problems('metadata.labels', key)
        if len(value) > 63:
            problems.append(('metadata.labels', 'FieldValueInvalid',
                             f'Invalid value: "{value}": must be no more than 63 characters'))
        if not LABEL_VALUE.fullmatch(value):
            problems.append(('metadata.labels', 'FieldValueInvalid', f'Invalid value: "{value}": {LABEL_VALUE_RULE}'))
    annotations = meta.get('annotations') or {}
    for key in annotations:
        problems += key_problems('metadata.annotations', key)
    if sum(len(key) + len(value) for key, value in annotations.items()) > MAX_ANNOTATIONS_BYTES:
        problems.append(('metadata.annotations', 'FieldValueTooLong',
                         f'Too long: may not be more than {MAX_ANNOTATIONS_BYTES} bytes'))
    return problems


def pruned_metadata(meta: dict[str, Any]) -> list[str]:
    """Drop the fields ObjectMeta does not have, as decoding does; return their paths."""
    unknown = sorted(key for key in meta if key not in OBJECT_META_FIELDS)
    for key in unknown:
        del meta[key]
    return [f'metadata.{key}' for key in unknown]


# ------------------------------------------------------------------------------------------------
# Server-side tables (what `kubectl get` prints).

def human_age(seconds: float) -> str:
    """The apiserver's ``HumanDuration``: 45s, 3m20s, 15m, 5h10m, 20h, 3d4h, 100d, 2y30d, 10y."""
    if seconds < -1:
        return '<invalid>'
    seconds = max(int(seconds), 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f'{seconds}s'
    if minutes < 10:
        return f'{minutes}m{seconds % 60}s' if seconds % 60 else f'{minutes}m'
    if minutes < 180:
        return f'{minutes}m'
    if hours < 8:
        return f'{hours}h{minutes % 60}m' if minutes % 60 else f'{hours}h'
    if hours < 48:
        return f'{hours}h'
    if hours < 24 * 8:
        return f'{days}d{hours % 24}h' if hours % 24 else f'{days}d'
    if days < 365 * 2:
        return f'{days}d'
    if days < 365 * 8:
        return f'{days // 365}y{days % 365}d' if days % 365 else f'{days // 365}y'
    return f'{days // 365}y'


def parse_timestamp(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace('Z', '+00:00'))


def format_timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def age_of(timestamp: str | None) -> str:
    if not timestamp:
        return '<unknown>'
    return human_age((datetime.datetime.now(datetime.UTC) - parse_timestamp(timestamp)).total_seconds())


@functools.lru_cache(maxsize=256)
def _compiled_jsonpath(path: str) -> Any:
    return parse_jsonpath('$' + path.strip().removeprefix('{').removesuffix('}').removeprefix('$'))


def jsonpath_values(obj: Mapping[str, Any], path: str) -> list[Any]:
    """Evaluate a printer column's jsonPath (e.g. ``.status.conditions[?(@.type=="Ready")].status``)."""
    return [match.value for match in _compiled_jsonpath(path).find(obj)]


def printer_cell(value: Any, column_type: str) -> Any:
    """Type a printer column's value as the CRD table convertor does (None prints as <none>)."""
    if value is None:
        return None
    match column_type:
        case 'date':
            return age_of(value) if isinstance(value, str) else '<invalid>'
        case 'integer':
            return int(value) if isinstance(value, int | float) else None
        case 'number':
            return value if isinstance(value, int | float) else None
        case 'boolean':
            return value if isinstance(value, bool) else None
        case _:
            return value if isinstance(value, str) else json.dumps(value)


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    cell: Callable[[Mapping[str, Any]], Any]
    type: str = 'string'
    priority: int = 0
    format: str = ''
    description: str = ''

    def definition(self) -> dict[str, Any]:
        return {'name': self.name, 'type': self.type, 'format': self.format,
                'description': self.description, 'priority': self.priority}


def jsonpath_column(spec: Mapping[str, Any]) -> Column:
    """A column from a CRD's ``additionalPrinterColumns`` entry."""
    def cell(obj: Mapping[str, Any]) -> Any:
        values = jsonpath_values(obj, spec['jsonPath'])
        return printer_cell(values[0] if values else None, spec['type'])
    return Column(spec['name'], cell, type=spec['type'], priority=spec.get('priority', 0),
                  format=spec.get('format', ''), description=spec.get('description', ''))


NAME_COLUMN = Column('Name', lambda o: o['metadata']['name'], format='name',
                     description='Name must be unique within a namespace.')
AGE_COLUMN = Column('Age', lambda o: age_of(o['metadata'].get('creationTimestamp')), type='date',
                    description='CreationTimestamp is the time the object was created.')


def crd_columns(version: Mapping[str, Any]) -> list[Column]:
    """Name + the declared columns, or Name + Age when none are declared (as the real server)."""
    declared = version.get('additionalPrinterColumns') or []
    return [NAME_COLUMN] + ([jsonpath_column(spec) for spec in declared] or [AGE_COLUMN])


def pod_ready(pod: Mapping[str, Any]) -> str:
    statuses = pod.get('status', {}).get('containerStatuses') or []
    return f"{sum(bool(s.get('ready')) for s in statuses)}/{len(pod.get('spec', {}).get('containers') or [])}"


def pod_status(pod: Mapping[str, Any]) -> str:
    """The STATUS column: Terminating, a container's waiting/terminated reason, or the phase."""
    if pod['metadata'].get('deletionTimestamp'):
        return 'Terminating'
    status = pod.get('status', {})
    for container in status.get('containerStatuses') or []:
        state = container.get('state') or {}
        for reason in (state.get('waiting', {}).get('reason'), state.get('terminated', {}).get('reason')):
            if reason:
                return reason
    return status.get('reason') or status.get('phase') or 'Unknown'


POD_COLUMNS = [
    NAME_COLUMN,
    Column('Ready', pod_ready),
    Column('Status', pod_status),
    Column('Restarts',
           lambda p: sum(s.get('restartCount', 0) for s in p.get('status', {}).get('containerStatuses') or []),
           type='integer'),
    AGE_COLUMN,
    Column('IP', lambda p: p.get('status', {}).get('podIP'), priority=1),
    Column('Node', lambda p: p.get('spec', {}).get('nodeName'), priority=1),
]
BUILTIN_COLUMNS: dict[kmock.resource, list[Column]] = {
    PODS: POD_COLUMNS,
    NAMESPACES: [NAME_COLUMN, Column('Status', lambda n: n.get('status', {}).get('phase')), AGE_COLUMN],
}


def build_table(columns: list[Column], objects: Iterable[Mapping[str, Any]], *,
                include_object: str, resource_version: str) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table; ``include_object`` is None, Metadata or Object (as ?includeObject=)."""
    def row(obj: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {'cells': [column.cell(obj) for column in columns]}
        if include_object == 'Object':
            result['object'] = obj
        elif include_object == 'Metadata':
            result['object'] = {'kind': 'PartialObjectMetadata', 'apiVersion': 'meta.k8s.io/v1',
                                'metadata': obj['metadata']}
        return result
    return {'kind': 'Table', 'apiVersion': 'meta.k8s.io/v1', 'metadata': {'resourceVersion': resource_version},
            'columnDefinitions': [column.definition() for column in columns],
            'rows': [row(obj) for obj in objects]}


def header(request: kmock.Request, name: str, default: str = '') -> str:
    return next((value for key, value in request.headers.items() if key.lower() == name.lower()), default)


def wants_table(request: kmock.Request) -> bool:
    """kubectl asks for ``application/json;as=Table;v=v1;g=meta.k8s.io`` first, then plain JSON."""
    preferred = header(request, 'Accept').split(',')[0]
    return 'as=Table' in preferred and 'g=meta.k8s.io' in preferred


# ------------------------------------------------------------------------------------------------
# Custom resource definitions.

@dataclasses.dataclass(frozen=True)
class CustomResource:
    """One served version of a CRD: what discovery, tables and /openapi/v3 need."""
    resource: kmock.resource
    info: kmock.ResourceInfo
    columns: list[Column]
    schema: Mapping[str, Any]
    has_rules: bool  # CEL rules (x-kubernetes-validations) anywhere in the schema


def custom_resources(crd: Mapping[str, Any]) -> list[CustomResource]:
    """Read every served version of a CustomResourceDefinition object."""
    spec = crd['spec']
    names = spec['names']
    result = []
    for version in spec['versions']:
        if not version.get('served', True):
            continue
        info = kmock.ResourceInfo(
            kind=names['kind'],
            singular=names.get('singular') or names['kind'].lower(),
            namespaced=spec.get('scope', 'Namespaced') == 'Namespaced',
            verbs=STANDARD_VERBS,
            shortnames=names.get('shortNames', []),
            categories=names.get('categories', []),
            subresources=set(version.get('subresources') or {}),
        )
        schema = (version.get('schema') or {}).get('openAPIV3Schema') or {}
        resource = kmock.resource(spec['group'], version['name'], names['plural'])
        result.append(CustomResource(resource, info, crd_columns(version), schema,
                                     'x-kubernetes-validations' in json.dumps(schema)))
    return result


def declare_crd(emulator: KubernetesEmulator, crd: Mapping[str, Any]) -> list[kmock.resource]:
    """Serve the custom resources of a CRD object (without storing the CRD object itself)."""
    declared = []
    for custom in custom_resources(crd):
        emulator.resources[custom.resource] = custom.info
        emulator.custom_resources[custom.resource] = custom
        declared.append(custom.resource)
    return declared


def crd_established(crd: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The status a real server gives an accepted CRD (``kubectl wait --for=condition=Established``)."""
    conditions = [{'type': kind, 'status': 'True', 'reason': reason, 'message': message, 'lastTransitionTime': now}
                  for kind, reason, message in [
                      ('NamesAccepted', 'NoConflicts', 'no conflicts found'),
                      ('Established', 'InitialNamesAccepted', 'the initial names have been accepted')]]
    stored = [v['name'] for v in crd['spec']['versions'] if v.get('storage')]
    return {'acceptedNames': crd['spec']['names'], 'conditions': conditions, 'storedVersions': stored}


def openapi_document(
    served: Iterable[tuple[kmock.resource, kmock.ResourceInfo, Mapping[str, Any] | None]],
) -> dict[str, Any]:
    """A minimal OpenAPI v3 document of one group-version.

    kubectl reads it to decide how to validate (a PATCH that accepts ``fieldValidation`` means
    "the server validates") and ``kubectl explain`` reads the schemas (those of CRDs only).
    """
    schemas, paths = {}, {}
    for resource, info, schema in served:
        gvk = {'group': resource.group, 'version': resource.version, 'kind': info.kind}
        schema_name = f"{'.'.join(reversed(str(resource.group).split('.')))}.{resource.version}.{info.kind}"
        schemas[schema_name] = dict(schema or {}, **{'x-kubernetes-group-version-kind': [gvk]})
        prefix = f'/apis/{resource.group}/{resource.version}' if resource.group else f'/api/{resource.version}'
        scope = '/namespaces/{namespace}' if info.namespaced else ''
        schema_ref = {'$ref': f'#/components/schemas/{schema_name}'}
        returns = {'200': {'content': {'application/json': {'schema': schema_ref}}}}
        paths[f'{prefix}{scope}/{resource.plural}/{{name}}'] = {
            'get': {'x-kubernetes-action': 'get', 'x-kubernetes-group-version-kind': gvk, 'responses': returns},
            'patch': {'x-kubernetes-action': 'patch', 'x-kubernetes-group-version-kind': gvk, 'responses': returns,
                      'parameters': [{'name': 'fieldValidation', 'in': 'query', 'schema': {'type': 'string'}}]},
        }
    return {'openapi': '3.0.0', 'info': {'title': 'Kubernetes', 'version': 'v1.32.0'}, 'paths': paths,
            'components': {'schemas': schemas}}


# ------------------------------------------------------------------------------------------------
# The emulator.

@dataclasses.dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED
    object: dict[str, Any]
    previous: dict[str, Any] | None  # for selector-filtered watches: did the object match before?
    resource_version: int


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which objects a list or watch request is about."""
    namespace: str | None = None
    name: str | None = None
    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    @classmethod
    def of(cls, request: kmock.Request, resource: kmock.resource) -> Selection:
        """What `request` selects of `resource` (the served resource it names)."""
        return cls(request.namespace, request.name,
                   tuple(parse_label_selector(request.params.get('labelSelector', ''))),
                   tuple(parse_field_selector(request.params.get('fieldSelector', ''), resource)))

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj['metadata']
        return ((self.namespace is None or meta.get('namespace') == self.namespace)
                and (self.name is None or meta['name'] == self.name)
                and all(r.matches(meta.get('labels') or {}) for r in self.labels)
                and all(r.matches(obj) for r in self.fields))

    def seen(self, event: WatchEvent) -> WatchEvent | None:
        """The event as this watch sees it: leaving the selection is DELETED, entering is ADDED."""
        now, before = self.matches(event.object), self.matches(event.previous)
        if event.type != 'MODIFIED' or now == before:
            return event if now else None
        return dataclasses.replace(event, type='ADDED' if now else 'DELETED')


@attrs.define(kw_only=True)
class KubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the semantics of a real API server (see the module docstring).

    Objects live in ``.objects`` (kmock's versioned store, keyed by resource, namespace, name) and resources in
    ``.resources``. Write only through the HTTP API while serving: direct writes are not streamed to watchers.
    Requests are routed here, not through kmock's reactions: kmock records every request and matches each new one
    by walking that record, which has no public bound, so a long run (a benchmark) slowed down without end.
    """

    # What the server does with a custom resource's body against its CRD schema (pruning, defaulting,
    # validation); ValueError means 422 (promptopt_harness.admission.Rejected lists the fields).
    admission: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] = admit
    custom_resources: dict[kmock.resource, CustomResource] = attrs.field(factory=dict, init=False)
    _last_resource_version: int = attrs.field(default=0, init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _watchers: dict[kmock.resource, kmock.Bus[WatchEvent]] = attrs.field(
        factory=lambda: collections.defaultdict(kmock.Bus), init=False)
    _recent_events: dict[kmock.resource, collections.deque[WatchEvent]] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=RECENT_EVENTS_PER_RESOURCE)),
        init=False)
    # The resourceVersion a resource's event history starts at (a CRD's declaration; 0 for builtins): a watch
    # from before it is "410 Gone", as from before the real server's watch cache.
    _history_start: dict[kmock.resource, int] = attrs.field(factory=lambda: collections.defaultdict(int), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()

    # --- request routing -------------------------------------------------------------------------

    @override
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        try:
            request = await parsed_request(raw_request)
            return await self._respond(raw_request, await self._handle(request))
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)

    # kmock's _handle renders the response; ours gives the payload, which __call__ (kmock's replaced, so the only
    # caller) renders with _respond.
    @override
    async def _handle(self, request: kmock.Request) -> kmock.Payload:  # type: ignore[override]
        """What the request gets: a resource request is served by its action, anything else is discovery."""
        if request.resource is None:
            return await self._serve_discovery(request)
        actions = {kmock.action.LIST: self._serve_list, kmock.action.WATCH: self._serve_watch,
                   kmock.action.FETCH: self._serve_fetch, kmock.action.CREATE: self._serve_create,
                   kmock.action.UPDATE: self._serve_update, kmock.action.DELETE: self._serve_delete}
        serve = actions.get(request.action) if request.action is not None else None
        if serve is None:
            self._served(request)  # an unknown subresource is a 404 first
            raise api_error(405, 'MethodNotAllowed', f'the server does not allow this method on the requested '
                                                     f'resource ({request.method.value} {request.url.path})')
        if 'dryRun' in request.params:
            raise api_error(400, 'BadRequest', 'dryRun is not served by the emulator: use the real API server')
        return await serve(request)

    async def _respond(self, raw_request: aiohttp.web.BaseRequest, answer: kmock.Payload) -> aiohttp.web.StreamResponse:
        """A JSON response, or a stream of JSON lines for a watch (an async iterator of events)."""
        status, payload, headers = 200, answer, dict[str, str]()
        if isinstance(answer, kmock.Response):  # a header of None is not sent, as kmock renders a Response
            status, payload = answer.status or 200, answer.payload
            headers = {key: value for key, value in (answer.headers or {}).items() if value is not None}
        if not isinstance(payload, AsyncIterator):
            return aiohttp.web.json_response(payload, status=status, headers=headers)
        response = aiohttp.web.StreamResponse(status=status, headers=JSON_HEADERS)
        await response.prepare(raw_request)  # the headers now: clients wait for them before reading events
        with contextlib.suppress(ConnectionError):  # the client went away
            async for event in payload:
                await response.write(json.dumps(event).encode() + b'\n')
            await response.write_eof()
        return response

    @override
    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        assert isinstance(exc, kmock.KubernetesError)
        status = {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure', 'code': exc.status,
                  'message': exc.message}
        status |= {'reason': exc.reason} if exc.reason else {}
        status |= {'details': exc.details} if exc.details else {}
        return aiohttp.web.json_response(status, status=exc.status)

    # --- discovery -------------------------------------------------------------------------------

    async def _serve_discovery(self, request: kmock.Request) -> kmock.Payload:
        path = request.url.path.rstrip('/') or '/'
        parts = path.strip('/').split('/')
        if request.method != kmock.method.GET:
            raise api_error(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')
        if path == '/':
            return {'paths': sorted({'/api', '/api/v1', '/apis', '/version', '/openapi/v3'}
                                    | {f'/apis/{g}/{v}' for g, v in self._group_versions() if g})}
        if path == '/version':
            return self._server_version()
        if path == '/api':
            return {'kind': 'APIVersions', 'versions': ['v1'], 'serverAddressByClientCIDRs': []}
        if path == '/apis':
            return {'kind': 'APIGroupList', 'apiVersion': 'v1',
                    'groups': [self._group(g) for g in sorted({g for g, _ in self._group_versions() if g})]}
        if parts[0] == 'apis' and len(parts) == 2 and any(g == parts[1] for g, _ in self._group_versions()):
            return self._group(parts[1])
        if parts[0] == 'api' and len(parts) == 2:
            return self._group_version('', parts[1])
        if parts[0] == 'apis' and len(parts) == 3:
            return self._group_version(parts[1], parts[2])
        if path == '/openapi/v3':
            return self._openapi_paths()
        if re.fullmatch(r'/openapi/v3/(api|apis/[^/]+)/[^/]+', path):
            return self._openapi_group_version(path)
        raise api_error(404, 'NotFound', 'the server could not find the requested resource')

    def _group(self, group: str) -> dict[str, Any]:
        versions = sorted(v for g, v in self._group_versions() if g == group)
        entries = [{'groupVersion': f'{group}/{v}', 'version': v} for v in versions]
        return {'kind': 'APIGroup', 'apiVersion': 'v1', 'name': group, 'versions': entries,
                'preferredVersion': entries[0]}

    def _group_version(self, group: str, version: str) -> dict[str, Any]:
        served = sorted((r for r in self.resources if r.group == group and r.version == version),
                        key=lambda r: str(r.plural))
        if not served:
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        return {'kind': 'APIResourceList', 'apiVersion': 'v1',
                'groupVersion': f'{group}/{version}' if group else version,
                'resources': [entry for r in served for entry in self._discovery_entries(r)]}

    def _discovery_entries(self, resource: kmock.resource) -> list[dict[str, Any]]:
        info = self.resources[resource]
        verbs = set(info.verbs or STANDARD_VERBS) - {'deletecollection'}  # not emulated
        main = {'name': resource.plural, 'singularName': info.singular or '', 'namespaced': bool(info.namespaced),
                'kind': info.kind, 'verbs': sorted(verbs)}
        main |= {'shortNames': sorted(info.shortnames)} if info.shortnames else {}
        main |= {'categories': sorted(info.categories)} if info.categories else {}
        subs = [{'name': f'{resource.plural}/{sub}', 'singularName': '', 'namespaced': bool(info.namespaced),
                 'kind': info.kind, 'verbs': SUBRESOURCE_VERBS} for sub in sorted(info.subresources)]
        return [main, *subs]

    @staticmethod
    def _server_version() -> dict[str, Any]:
        return {'major': '1', 'minor': '33', 'gitVersion': 'v1.33.0', 'platform': 'linux/amd64',
                'gitCommit': '', 'gitTreeState': 'clean', 'buildDate': '', 'goVersion': '', 'compiler': 'gc'}

    def _group_versions(self) -> set[tuple[str, str]]:
        return {(str(r.group), str(r.version)) for r in self.resources}

    def _openapi_paths(self) -> dict[str, Any]:
        prefixes = {(g, v): f'apis/{g}/{v}' if g else f'api/{v}' for g, v in self._group_versions()}
        return {'paths': {prefix: {'serverRelativeURL': f'/openapi/v3/{prefix}'}
                          for prefix in sorted(prefixes.values())}}

    def _openapi_group_version(self, path: str) -> dict[str, Any]:
        *_, group, version = path.split('/')
        group = '' if group == 'api' else group
        if (group, version) not in self._group_versions():
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        customs = self.custom_resources
        # By key, not .items(): kmock's ResourcesArray types its items loosely (keys it parses, values it converts).
        return openapi_document((r, self.resources[r], customs[r].schema if r in customs else None)
                                for r in self.resources if (r.group, r.version) == (group, version))

    # --- reading ---------------------------------------------------------------------------------

    def _served(self, request: kmock.Request) -> kmock.resource:
        """The requested resource if it is served; of the subresources, /status and pods/binding are emulated."""
        resource = request.resource
        emulated = {'status', *(['binding'] if resource == PODS else [])}
        if (resource is None or resource not in self.resources
                or request.subresource not in {None, *(emulated & self.resources[resource].subresources)}):
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        return resource

    def _current(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (resource, namespace if self.resources[resource].namespaced else None, name)
        return None if key not in self.objects or self.objects[key].deleted else self.objects[key].raw

    def _existing(self, request: kmock.Request) -> dict[str, Any]:
        assert request.resource is not None and request.name is not None
        obj = self._current(request.resource, request.namespace, request.name)
        if obj is None:
            raise not_found(request.resource, request.name)
        return obj

    def _selected(self, resource: kmock.resource, selection: Selection) -> list[dict[str, Any]]:
        objs = [obj.raw for (res, _, _), obj in self.objects.items() if res == resource and not obj.deleted]
        return sorted((o for o in objs if selection.matches(o)),
                      key=lambda o: (o['metadata'].get('namespace') or '', o['metadata']['name']))

    def _columns(self, resource: kmock.resource) -> list[Column]:
        if resource in self.custom_resources:
            return self.custom_resources[resource].columns
        return BUILTIN_COLUMNS.get(resource, [NAME_COLUMN, AGE_COLUMN])

    def _as_table(self, request: kmock.Request, objs: list[dict[str, Any]]) -> dict[str, Any]:
        assert request.resource is not None
        return build_table(self._columns(request.resource), objs, resource_version=str(self._last_resource_version),
                           include_object=request.params.get('includeObject', 'Metadata'))

    def _kind(self, resource: kmock.resource) -> str:
        kind = self.resources[resource].kind
        assert kind is not None, f'{resource} is served: its kind is bundled or from its CRD'
        return kind

    def _api_version(self, resource: kmock.resource) -> str:
        return f'{resource.group}/{resource.version}' if resource.group else str(resource.version)

    @override
    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        resource = self._served(request)
        objs = self._selected(resource, Selection.of(request, resource))
        if wants_table(request):
            return self._as_table(request, objs)
        return {'apiVersion': self._api_version(resource), 'kind': f'{self.resources[resource].kind}List',
                'metadata': {'resourceVersion': str(self._last_resource_version)}, 'items': objs}

    @override
    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        self._served(request)
        obj = self._existing(request)
        return self._as_table(request, [obj]) if wants_table(request) else obj

    # kmock's _serve_watch is an async generator; ours refuses a bad watch before any header is sent, then answers
    # with the stream (a Response), as kmock's fallbacks may.
    @override
    async def _serve_watch(self, request: kmock.Request) -> kmock.Payload:  # type: ignore[override]
        resource = self._served(request)
        selection = Selection.of(request, resource)
        since = request.params.get('resourceVersion') or '0'
        if not since.isdigit():
            raise api_error(400, 'BadRequest', f'invalid resource version: resourceVersion: Invalid value: "{since}": '
                                               f'strconv.ParseUint: parsing "{since}": invalid syntax')
        if request.params.get('sendInitialEvents') == 'true':  # as kube-apiserver 1.33, whose WatchList gate is off
            raise api_error(422, 'Invalid', 'ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: Forbidden: '
                                            'sendInitialEvents is forbidden for watch unless the WatchList feature '
                                            'gate is enabled', group='meta.k8s.io', kind='ListOptions')
        timeout = float(request.params['timeoutSeconds']) if request.params.get('timeoutSeconds') else None
        async with self._write_lock:
            mark = await self._watchers[resource].mark()
            initial = self._initial_watch_events(resource, selection, int(since))
        render: Callable[[dict[str, Any]], Any] = (
            (lambda obj: self._as_table(request, [obj])) if wants_table(request) else (lambda obj: obj))
        stream = self._watch_stream(resource, mark, initial, selection, render, timeout)
        return kmock.Response(headers=JSON_HEADERS, payload=stream)

    def _initial_watch_events(self, resource: kmock.resource, selection: Selection, since: int) -> list[dict[str, Any]]:
        """What a watch sends first: the current objects (from 0), or what happened after ``since``."""
        if since == 0:
            return [{'type': 'ADDED', 'object': o} for o in self._selected(resource, selection)]
        recent = self._recent_events[resource]
        oldest = recent[0].resource_version - 1 if len(recent) == recent.maxlen else self._history_start[resource]
        if since < oldest:
            gone = {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
                    'message': f'too old resource version: {since} ({oldest})', 'reason': 'Expired', 'code': 410}
            return [{'type': 'ERROR', 'object': gone}]
        seen = (selection.seen(e) for e in recent if e.resource_version > since)
        return [{'type': e.type, 'object': e.object} for e in seen if e is not None]

    async def _watch_stream(self, resource: kmock.resource, mark: kmock.BusMark[WatchEvent],
                            initial: list[dict[str, Any]], selection: Selection,
                            render: Callable[[dict[str, Any]], Any], timeout: float | None) -> AsyncIterator[Any]:
        bus = self._watchers[resource]
        try:
            for event in initial:
                yield dict(event, object=render(event['object'])) if event['type'] != 'ERROR' else event
            if initial and initial[-1]['type'] == 'ERROR':
                return
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            live = aiter(bus.stream(since=mark))
            while True:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                try:
                    live_event = await asyncio.wait_for(anext(live), remaining)
                except TimeoutError:
                    return
                seen = selection.seen(live_event)
                if seen is not None:
                    yield {'type': seen.type, 'object': render(seen.object)}
        finally:
            await bus.unmark(mark)

    # --- writing ---------------------------------------------------------------------------------

    def _next_resource_version(self) -> str:
        self._last_resource_version += 1
        return str(self._last_resource_version)

    async def _publish(self, resource: kmock.resource, event_type: str, obj: dict[str, Any],
                       previous: dict[str, Any] | None) -> None:
        event = WatchEvent(event_type, obj, previous, int(obj['metadata']['resourceVersion']))
        self._recent_events[resource].append(event)
        await self._watchers[resource].put(event)

    async def _store(self, resource: kmock.resource, obj: dict[str, Any],
                     previous: dict[str, Any] | None) -> dict[str, Any]:
        """Write a new or changed object with a new resourceVersion; tell the watchers. Too large for etcd: 500."""
        meta = obj['metadata']
        check_storable(resource, obj)
        meta['resourceVersion'] = self._next_resource_version()
        key = (resource, meta.get('namespace'), meta['name'])
        if key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj
        await self._publish(resource, 'MODIFIED' if previous else 'ADDED', obj, previous)
        if resource == CRDS:
            for declared in declare_crd(self, obj):
                self._history_start.setdefault(declared, self._last_resource_version)
        return obj

    async def _remove(self, resource: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Delete an object from storage. Nothing else goes with it: no controller collects its dependents."""
        meta = obj['metadata']
        self.objects[resource, meta.get('namespace'), meta['name']].delete()
        gone = copy.deepcopy(obj)
        gone['metadata']['resourceVersion'] = self._next_resource_version()
        await self._publish(resource, 'DELETED', gone, obj)
        return gone

    @override
    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        resource = self._served(request)
        body = request_body(request)
        if not isinstance(body, dict):
            raise api_error(400, 'BadRequest', 'the request body must be a JSON object')
        if request.subresource == 'binding':
            return await self._bind(request, body)
        async with self._write_lock:
            validation = field_validation(request, 'Create')
            obj, pruned = self._new_object(resource, request.namespace, body, validation)
            if self._current(resource, obj['metadata'].get('namespace'), obj['metadata']['name']) is not None:
                name = obj['metadata']['name']
                raise api_error(409, 'AlreadyExists', f'{resource_label(resource)} "{name}" already exists',
                                name=name, group=resource.group, kind=resource.plural)
            created = await self._store(resource, obj, None)
        return kmock.Response(status=201, headers=warnings(pruned, validation), payload=created)

    async def _bind(self, request: kmock.Request, binding: dict[str, Any]) -> kmock.Payload:
        """pods/NAME/binding, as the scheduler binds: once, to a node; PodScheduled becomes True."""
        async with self._write_lock:
            pod = self._existing(request)
            name = pod['metadata']['name']
            node = (binding.get('target') or {}).get('name')
            if not node:
                raise api_error(422, 'Invalid', f'Binding "{name}" is invalid: target.name: Required value')
            if pod['spec'].get('nodeName'):
                raise conflict(PODS, name, f'pod {name} is already assigned to node "{pod["spec"]["nodeName"]}"')
            bound = copy.deepcopy(pod)
            bound['spec']['nodeName'] = node
            status = bound.setdefault('status', {})
            status['conditions'] = [c for c in status.get('conditions') or [] if c.get('type') != 'PodScheduled'] + [
                {'type': 'PodScheduled', 'status': 'True',
                 'lastTransitionTime': format_timestamp(datetime.datetime.now(datetime.UTC))}]
            await self._store(PODS, bound, pod)
        return kmock.Response(status=201, payload={'kind': 'Status', 'apiVersion': 'v1', 'metadata': {},
                                                   'status': 'Success', 'code': 201})

    def _new_object(self, resource: kmock.resource, url_namespace: str | None, body: dict[str, Any],
                    validation: str) -> tuple[dict[str, Any], list[str]]:
        """The object as the server stores it at creation (identity, metadata, defaults, no status), and the
        unknown fields it dropped; in that order the real server decodes, admits and validates."""
        info = self.resources[resource]
        obj = copy.deepcopy(body)
        meta = obj.setdefault('metadata', {})
        self._check_type(resource, obj, meta.get('name', ''))
        pruned = self._pruned(resource, obj)
        if pruned and validation == 'Strict':
            raise api_error(400, 'BadRequest', f'{info.kind} in version "{resource.version}" cannot be handled as a '
                                               f'{info.kind}: {strict_decoding_error(pruned)}')
        if meta.get('resourceVersion'):
            raise api_error(500, None, 'resourceVersion should not be set on objects to be created')
        for system_field in ('uid', 'deletionTimestamp', 'deletionGracePeriodSeconds'):
            meta.pop(system_field, None)
        if info.namespaced:
            if url_namespace and meta.get('namespace') not in {None, url_namespace}:
                raise api_error(400, 'BadRequest', 'the namespace of the provided object does not match '
                                                   'the namespace sent on the request')
            meta['namespace'] = url_namespace or meta.get('namespace')
            if not meta['namespace']:
                raise api_error(400, 'BadRequest', 'a namespace is required for a namespaced resource')
            if self._current(NAMESPACES, None, meta['namespace']) is None:
                raise not_found(NAMESPACES, meta['namespace'])
        else:
            meta.pop('namespace', None)
        if not meta.get('name'):
            if not meta.get('generateName'):
                raise self._invalid(resource, '', [('metadata.name', 'FieldValueRequired',
                                                    'Required value: name or generateName is required')])
            meta['name'] = self._generated_name(resource, meta.get('namespace'), meta['generateName'])
        now = format_timestamp(datetime.datetime.now(datetime.UTC))
        meta |= {'uid': str(uuid.uuid4()), 'creationTimestamp': now, 'generation': 1}
        obj['apiVersion'], obj['kind'] = self._api_version(resource), info.kind
        if 'status' in info.subresources:
            obj.pop('status', None)  # a create cannot set the status of a resource with a status subresource
        return self._admitted(resource, with_builtin_defaults(resource, obj, now)), pruned

    def _check_type(self, resource: kmock.resource, obj: Mapping[str, Any], name: str) -> None:
        """A body's apiVersion and kind, where given, must be the resource's."""
        api_version, kind = self._api_version(resource), self.resources[resource].kind
        if obj.get('apiVersion') not in (None, '', api_version):
            raise api_error(400, 'BadRequest', f'the API version in the data ({obj["apiVersion"]}) does not match '
                                               f'the expected API version ({api_version})')
        if obj.get('kind') not in (None, '', kind):
            raise invalid(obj['kind'], str(resource.group), name,
                          [('kind', 'FieldValueInvalid', f'Invalid value: "{obj["kind"]}": must be {kind}')])

    def _pruned(self, resource: kmock.resource, obj: dict[str, Any]) -> list[str]:
        """Drop what decoding drops (ObjectMeta's unknown fields; a custom resource's undeclared ones): the paths."""
        metadata = pruned_metadata(obj['metadata']) if isinstance(obj.get('metadata'), dict) else []
        custom = self.custom_resources.get(resource)
        return metadata + (prune(dict(custom.schema), obj) if custom is not None and custom.schema else [])

    def _invalid(self, resource: kmock.resource, name: str, problems: list[Problem]) -> kmock.KubernetesError:
        custom = self.custom_resources.get(resource)
        if custom is not None and custom.has_rules:  # CEL runs on otherwise valid objects only, and says so
            problems = [*problems, ('<nil>', 'FieldValueInvalid', 'Invalid value: "null": some validation rules '
                                    'were not checked because the object was invalid; correct the existing errors '
                                    'to complete validation')]
        return invalid(self._kind(resource), str(resource.group), name, problems)

    def _admitted(self, resource: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        """ObjectMeta validation for every kind, then a custom resource's schema and rules (admission)."""
        name = obj['metadata']['name']
        problems = metadata_problems(resource, obj['metadata'])
        if problems:
            raise self._invalid(resource, name, problems)
        custom = self.custom_resources.get(resource)
        if custom is None or not custom.schema:
            return obj
        try:
            return self.admission(dict(custom.schema), obj)
        except ValueError as exc:
            lines = getattr(exc, 'problems', None) or [str(exc)]
            raise invalid(self._kind(resource), str(resource.group), name,
                          [(field, cause_reason(message), message)
                           for field, _, message in (line.partition(': ') for line in lines)]) from exc

    def _generated_name(self, resource: kmock.resource, namespace: str | None, prefix: str) -> str:
        while True:
            name = prefix + ''.join(random.choices(NAME_SUFFIX_ALPHABET, k=5))
            if self._current(resource, namespace, name) is None:
                return name

    @override
    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        resource = self._served(request)
        body = request_body(request)
        content_type = header(request, 'Content-Type', 'application/json').split(';')[0].strip()
        replacing = request.method == kmock.method.PUT
        validation = field_validation(request, 'Update' if replacing else 'Patch')
        patch_types = ['application/json-patch+json', 'application/merge-patch+json',
                       *([] if resource in self.custom_resources else ['application/strategic-merge-patch+json'])]
        if not replacing and content_type not in patch_types:  # server-side apply is not emulated either
            raise api_error(415, 'UnsupportedMediaType', 'the body of the request was in an unknown format - '
                                                         f"accepted media types include: {', '.join(patch_types)}")
        async with self._write_lock:
            current = self._existing(request)
            if replacing:
                self._check_replacement(resource, current, body)
            candidate = (copy.deepcopy(body) if replacing else
                         apply_json_patch(current, body) if content_type == 'application/json-patch+json' else
                         apply_merge_patch(current, without_patch_directives(body)))
            if not isinstance(candidate, dict) or not isinstance(candidate.get('metadata', {}), dict):
                raise api_error(400, 'BadRequest', 'the patched or replaced object must be a JSON object')
            candidate.setdefault('metadata', {})
            pruned = self._pruned(resource, candidate)
            if pruned and validation == 'Strict':
                raise strict_patch_error(candidate, pruned) if not replacing else api_error(
                    400, 'BadRequest', f'{current["kind"]} in version "{resource.version}" cannot be handled as a '
                                       f'{current["kind"]}: {strict_decoding_error(pruned)}')
            updated = self._updated(resource, current, candidate, request.subresource)
            if resource == SECRETS:
                fold_string_data(updated)
            if updated == current:  # a no-op write is not written: no new resourceVersion, no event
                return kmock.Response(headers=warnings(pruned, validation), payload=current)
            stored = await self._store(resource, updated, current)
            if is_released(stored):
                await self._remove(resource, stored)
        return kmock.Response(headers=warnings(pruned, validation), payload=stored)

    def _check_replacement(self, resource: kmock.resource, current: Mapping[str, Any], body: Any) -> None:
        """A custom resource is replaced only at a given resourceVersion (builtins allow unconditional updates)."""
        self._check_type(resource, body if isinstance(body, dict) else {}, current['metadata']['name'])
        if resource in self.custom_resources and not ((body or {}).get('metadata') or {}).get('resourceVersion'):
            name = current['metadata']['name']
            message = 'Invalid value: 0x0: must be specified for an update'
            raise api_error(422, 'Invalid', f'{resource_label(resource)} "{name}" is invalid: '
                                            f'metadata.resourceVersion: {message}',
                            name=name, group=resource.group, kind=resource.plural,
                            causes=[{'reason': 'FieldValueInvalid', 'field': 'metadata.resourceVersion',
                                     'message': message}])

    def _updated(self, resource: kmock.resource, current: dict[str, Any], candidate: Any,
                 subresource: str | None) -> dict[str, Any]:
        """Apply update semantics: optimistic locking, status subresource split, system fields, generation."""
        name = current['metadata']['name']
        requested_version = candidate.get('metadata', {}).get('resourceVersion')
        if requested_version and requested_version != current['metadata']['resourceVersion']:
            raise conflict(resource, name, 'the object has been modified; please apply your changes '
                                           'to the latest version and try again')
        if subresource == 'status':
            updated = dict(copy.deepcopy(current), status=copy.deepcopy(candidate.get('status')))
        else:
            updated = copy.deepcopy(candidate)
            if 'status' in self.resources[resource].subresources:
                updated['status'] = copy.deepcopy(current.get('status'))
        updated = {key: value for key, value in updated.items() if value is not None}
        meta = updated.setdefault('metadata', {})
        for field in ('name', 'namespace', 'uid', 'creationTimestamp', 'generation', 'resourceVersion',
                      'deletionTimestamp', 'deletionGracePeriodSeconds'):
            if field in current['metadata']:
                meta[field] = current['metadata'][field]
            else:
                meta.pop(field, None)
        updated['apiVersion'], updated['kind'] = current['apiVersion'], current['kind']
        if (resource == PODS and subresource is None
                and spec_of(updated).get('nodeName') != spec_of(current).get('nodeName')):
            raise api_error(422, 'Invalid', f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change '
                                            'fields other than `spec.containers[*].image`, ... (bind through '
                                            'pods/binding)')
        if spec_of(updated) != spec_of(current):
            meta['generation'] = current['metadata']['generation'] + 1
        return self._admitted(resource, updated)

    # --- deleting --------------------------------------------------------------------------------

    @override
    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        resource = self._served(request)
        if request.name is None or resource == NAMESPACES:
            raise api_error(405, 'MethodNotAllowed', 'the emulator deletes single objects only: no collections, no '
                                                     'namespaces (it has no namespace controller to empty them)')
        options = dict(request_body(request) or {}, **request.params)
        async with self._write_lock:
            current = self._existing(request)
            check_preconditions(resource, current, options.get('preconditions') or {})
            return await self._delete(resource, current, options)

    async def _delete(self, resource: kmock.resource, obj: dict[str, Any],
                      options: Mapping[str, Any]) -> dict[str, Any]:
        """Delete now, or mark for deletion (finalizers, graceful pod deletion) as the real server."""
        meta = obj['metadata']
        grace = grace_period(resource, obj, options)
        if meta.get('deletionTimestamp'):
            pending = meta.get('deletionGracePeriodSeconds') or 0
            if pending == 0 or grace >= pending:
                return obj  # already being deleted: only a shorter grace period changes anything
            marked = mark_deleting(obj, grace, restamp=True)
        elif grace > 0 or meta.get('finalizers'):
            marked = mark_deleting(obj, grace, restamp=False)
        else:
            return await self._remove(resource, obj)
        stored = await self._store(resource, marked, obj)
        return await self._remove(resource, stored) if is_released(stored) else stored


async def parsed_request(raw_request: aiohttp.web.BaseRequest) -> kmock.Request:
    """The request with its body read (up to the real server's limit) and its resource URL parsed."""
    try:
        body = await raw_request.clone(client_max_size=MAX_REQUEST_BODY_BYTES).read()
    except aiohttp.web.HTTPRequestEntityTooLarge:
        raise api_error(413, 'RequestEntityTooLarge',
                        f'Request entity too large: limit is {MAX_REQUEST_BODY_BYTES}') from None
    params = dict(raw_request.query)
    api_path = parse_api_path(raw_request.path)
    if api_path is None:
        return kmock.Request(method=raw_request.method, url=raw_request.url, params=params,
                             headers=dict(raw_request.headers), body=body)
    return kmock.Request(method=raw_request.method, url=raw_request.url, params=params,
                         headers=dict(raw_request.headers), body=body,
                         action=guess_action(raw_request.method, api_path, params), resource=api_path.resource,
                         namespace=api_path.namespace, name=api_path.name, subresource=api_path.subresource)


def request_body(request: kmock.Request) -> Any:
    """The body as JSON: sent as JSON, YAML, or protobuf (of the kinds kubectl's `create` subcommands send)."""
    content_type = header(request, 'Content-Type')
    if 'protobuf' in content_type:
        return decode_protobuf(request.body)
    if not request.body.strip():
        return None
    try:
        return yaml.safe_load(request.body) if 'yaml' in content_type else json.loads(request.body)
    except (ValueError, yaml.YAMLError) as exc:
        raise api_error(400, 'BadRequest', f'the object provided is unrecognized: json parse error: {exc}') from None


def field_validation(request: kmock.Request, operation: str) -> str:
    """``fieldValidation``: Strict refuses unknown fields, Warn (the default) and Ignore drop them."""
    directive = request.params.get('fieldValidation', '')
    if directive not in FIELD_VALIDATIONS:
        supported = ', '.join(f'"{value}"' for value in FIELD_VALIDATIONS)
        message = f'Unsupported value: "{directive}": supported values: {supported}'
        raise api_error(422, 'Invalid', f'{operation}Options.meta.k8s.io "" is invalid: fieldValidation: {message}',
                        group='meta.k8s.io', kind=f'{operation}Options',
                        causes=[{'reason': 'FieldValueNotSupported', 'message': message, 'field': 'fieldValidation'}])
    return directive or 'Warn'


def strict_decoding_error(pruned: list[str]) -> str:
    return 'strict decoding error: ' + ', '.join(f'unknown field "{path}"' for path in pruned)


def strict_patch_error(patched: Mapping[str, Any], pruned: list[str]) -> kmock.KubernetesError:
    """A patch whose result has unknown fields, under Strict: the real server quotes the patched object."""
    message = f'Invalid value: {json.dumps(json.dumps(patched, sort_keys=True, separators=(",", ":")))}: ' \
              f'{strict_decoding_error(pruned)}'
    return api_error(422, 'Invalid', f' "" is invalid: patch: {message}',
                     causes=[{'reason': 'FieldValueInvalid', 'message': message, 'field': 'patch'}])


def warnings(pruned: list[str], validation: str) -> dict[str, str]:
    """Under Warn, the Warning header for dropped fields (one warning each; comma-joined as HTTP allows)."""
    text = ', '.join('299 - ' + json.dumps(f'unknown field "{path}"') for path in pruned if validation == 'Warn')
    return {'Warning': text} if text else {}


def cause_reason(message: str) -> str:
    """The cause reason the real server gives a schema problem, from its message."""
    for prefix, reason in (('Required value', 'FieldValueRequired'), ('Unsupported value', 'FieldValueNotSupported'),
                           ('Too many', 'FieldValueTooMany'), ('Too long', 'FieldValueTooLong')):
        if message.startswith(prefix):
            return reason
    return 'FieldValueInvalid'


def check_storable(resource: kmock.resource, obj: Mapping[str, Any]) -> None:
    """What etcd and the apiserver's etcd client refuse: an object too large to store (a 500, as they answer)."""
    meta = obj['metadata']
    key = '/'.join(filter(None, ['/registry', str(resource.group), str(resource.plural), meta.get('namespace'),
                                 meta['name']]))
    stored = {**obj, 'metadata': {k: v for k, v in meta.items() if k != 'resourceVersion'}}  # etcd keeps it apart
    size = len(key) + len(json.dumps(stored, separators=(',', ':'))) + ETCD_PUT_OVERHEAD_BYTES
    if size > ETCD_CLIENT_MAX_SEND_BYTES:
        raise api_error(500, None, 'rpc error: code = ResourceExhausted desc = trying to send message larger than '
                                   f'max ({size} vs. {ETCD_CLIENT_MAX_SEND_BYTES})')
    if size > ETCD_MAX_REQUEST_BYTES:
        raise api_error(500, None, 'etcdserver: request is too large')


def spec_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a generation counts: everything except metadata and status."""
    return {key: value for key, value in obj.items() if key not in {'metadata', 'status'}}


def with_builtin_defaults(resource: kmock.resource, obj: dict[str, Any], now: str) -> dict[str, Any]:
    """The few defaults of builtin kinds that clients and the graceful deletion rely on."""
    if resource == PODS:
        obj.setdefault('spec', {}).setdefault('terminationGracePeriodSeconds', DEFAULT_POD_GRACE_SECONDS)
        obj.setdefault('status', {'phase': 'Pending'})
    elif resource == NAMESPACES:
        obj['metadata'].setdefault('labels', {})['kubernetes.io/metadata.name'] = obj['metadata']['name']
        obj.setdefault('status', {'phase': 'Active'})
    elif resource == CRDS:
        obj['status'] = crd_established(obj, now)
    elif resource == SECRETS:
        obj.setdefault('type', 'Opaque')
        fold_string_data(obj)
    return obj


def fold_string_data(secret: dict[str, Any]) -> None:
    """A Secret's stringData is write-only: the API server stores it base64-encoded in data."""
    for key, value in (secret.pop('stringData', None) or {}).items():
        secret.setdefault('data', {})[key] = base64.b64encode(str(value).encode()).decode()


def grace_period(resource: kmock.resource, obj: Mapping[str, Any], options: Mapping[str, Any]) -> int:
    """Seconds until removal: only scheduled, non-terminated pods are deleted gracefully."""
    if resource != PODS:
        return 0
    requested = options.get('gracePeriodSeconds')
    grace = int(requested) if requested is not None else obj.get('spec', {}).get(
        'terminationGracePeriodSeconds', DEFAULT_POD_GRACE_SECONDS)
    if not obj.get('spec', {}).get('nodeName') or obj.get('status', {}).get('phase') in TERMINAL_POD_PHASES:
        return 0
    return 1 if grace < 0 else grace


def mark_deleting(obj: Mapping[str, Any], grace: int, *, restamp: bool) -> dict[str, Any]:
    """Set deletionTimestamp (now + grace) and deletionGracePeriodSeconds; the first mark bumps generation."""
    marked = copy.deepcopy(dict(obj))
    meta = marked['metadata']
    if not restamp:
        meta['generation'] = meta.get('generation', 0) + 1
    deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=grace)
    meta['deletionTimestamp'] = format_timestamp(deadline)
    meta['deletionGracePeriodSeconds'] = grace
    return marked


def is_released(obj: Mapping[str, Any]) -> bool:
    """Marked for deletion with no grace period left and no finalizers: the server removes it now."""
    meta = obj['metadata']
    return (bool(meta.get('deletionTimestamp')) and not meta.get('finalizers')
            and not meta.get('deletionGracePeriodSeconds'))


def check_preconditions(resource: kmock.resource, obj: Mapping[str, Any], preconditions: Mapping[str, Any]) -> None:
    for field in ('uid', 'resourceVersion'):
        if preconditions.get(field) and preconditions[field] != obj['metadata'].get(field):
            raise conflict(resource, obj['metadata']['name'], f'Precondition failed: {field} in precondition: '
                                                              f'{preconditions[field]}, {field} in object meta: '
                                                              f'{obj["metadata"].get(field)}')


# ------------------------------------------------------------------------------------------------
# A running cluster for synchronous tests, subprocesses and kubectl.

class EmulatedCluster(ClusterApi):
    """The emulator on 127.0.0.1 in a background thread with its own event loop, plus a kubeconfig.

    Use as a context manager. On start it serves the CRD objects ``crds`` (default: promptopt's, from its API
    models; ``()`` for none) by creating them through the API, and creates the ``default`` namespace.
    ``admission`` is what prunes, defaults and validates custom resources against their CRD schema on
    every write (promptopt_harness.admission.admit, as the real server).
    """

    def __init__(self, crds: Iterable[Mapping[str, Any]] | None = None, *, port: int = 0,
                 kubeconfig: str | pathlib.Path | None = None, namespace: str = 'default',
                 admission: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] = admit) -> None:
        super().__init__('http://127.0.0.1:0', namespace=namespace)
        self.emulator = KubernetesEmulator(admission=admission)
        self.crds = [custom_resource_definition()] if crds is None else [dict(crd) for crd in crds]
        self._requested_port = port
        self._requested_kubeconfig = pathlib.Path(kubeconfig) if kubeconfig is not None else None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self.kubeconfig = pathlib.Path()

    def __enter__(self) -> EmulatedCluster:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name='k8s-emulator', daemon=True)
        self._thread.start()
        self._started.wait()
        if self._startup_error is not None:
            raise self._startup_error
        try:
            self.create({'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': self.namespace}})
            for crd in self.crds:
                self.create(crd)
            self.kubeconfig = self._requested_kubeconfig or self._temporary_kubeconfig()
            self.write_kubeconfig(self.kubeconfig)  # last: scripts wait for it
        except BaseException:
            self.__exit__()
            raise
        return self

    def _temporary_kubeconfig(self) -> pathlib.Path:
        self._tempdir = tempfile.TemporaryDirectory(prefix='k8s-emulator-')
        return pathlib.Path(self._tempdir.name) / 'kubeconfig'

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stopped is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=10)
        if self._tempdir is not None:
            self._tempdir.cleanup()

    async def _serve(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            async with self.emulator:
                # Watches never end by themselves: do not wait for them at shutdown.
                runner = aiohttp.web.ServerRunner(aiohttp.web.Server(self.emulator), shutdown_timeout=0.1)
                await runner.setup()
                site = aiohttp.web.TCPSite(runner, '127.0.0.1', self._requested_port)
                await site.start()
                host, port = runner.addresses[0][:2]
                self.url = f'http://{host}:{port}'
                self._started.set()
                try:
                    await self._stopped.wait()
                finally:
                    await runner.cleanup()
        except BaseException as exc:
            self._startup_error = exc
            self._started.set()
            raise

    @property
    def kubelet_kubeconfig(self) -> pathlib.Path:
        """The emulator has no authentication: every identity (kubelet, scheduler, operator) is the same."""
        return self.kubeconfig

    scheduler_kubeconfig = operator_kubeconfig = kubelet_kubeconfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description='Serve an emulated Kubernetes API until SIGTERM/SIGINT.')
    parser.add_argument('--port', type=int, default=0, help='the port on 127.0.0.1 (default: a free one)')
    parser.add_argument('--no-crds', action='store_true', help="start without promptopt's CRD")
    parser.add_argument('--kubeconfig', type=pathlib.Path, required=True, help='where to write the kubeconfig')
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with EmulatedCluster(() if args.no_crds else None, port=args.port, kubeconfig=args.kubeconfig) as cluster:
        print(f'Serving the emulated Kubernetes API at {cluster.url}; kubeconfig: {cluster.kubeconfig}', flush=True)
        while not stop.wait(0.2):  # a short wait lets the signal handlers run
            pass


if __name__ == '__main__':
    main()
