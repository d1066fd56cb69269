"""An emulated Kubernetes API server for tests, benchmarks and end-to-end scripts.

`KubernetesEmulator` is a subclass of kmock's emulator that behaves like a real API server where
kopf, the kubernetes client and kubectl notice the difference: object metadata (uid, generation,
resourceVersion, ...), status codes and Status bodies, resourceVersion-aware watches, selectors,
status subresources, finalizers, graceful pod deletion, ownerReference garbage collection,
discovery and server-side Tables. Custom resources are declared from CRD objects only.

`EmulatedCluster` runs it on a free localhost port in a background thread and writes a kubeconfig;
``python -m promptopt.testing.emulator`` runs it in the foreground for shell scripts.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import copy
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
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from jsonpath_ng.ext import parse as parse_jsonpath
from typing_extensions import override

from promptopt.testing.client import ClusterApi

REPO_CRDS = pathlib.Path(__file__).resolve().parents[2] / 'crds'
STANDARD_VERBS = frozenset({'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'})
SUBRESOURCE_VERBS = ['get', 'patch', 'update']
JSON_HEADERS = {'Content-Type': 'application/json'}
TERMINAL_POD_PHASES = frozenset({'Succeeded', 'Failed'})
DEFAULT_POD_GRACE_SECONDS = 30
RECENT_EVENTS_PER_RESOURCE = 10_000  # older resourceVersions get "410 Gone", as after etcd compaction
NAME_SUFFIX_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789'  # the apiserver's generateName alphabet

NAMESPACES = kmock.resource('', 'v1', 'namespaces')
NAMESPACES_ALIAS = '/api/v1/namespaces/-'  # "-" is not a valid namespace name, so the alias is unambiguous
PODS = kmock.resource('', 'v1', 'pods')
SECRETS = kmock.resource('', 'v1', 'secrets')
CRDS = kmock.resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions')


# ------------------------------------------------------------------------------------------------
# Errors as the API server reports them.

def api_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details or None)


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


def parse_field_selector(text: str) -> list[FieldRequirement]:
    """Parse ``metadata.name=x,spec.nodeName!=,status.phase==Running`` (dotted paths, = == !=)."""
    requirements = []
    for term in filter(None, (t.strip() for t in text.split(','))):
        match = re.fullmatch(r'([^=!]+?)\s*(==|=|!=)\s*(.*)', term)
        if not match:
            raise api_error(400, 'BadRequest', f'invalid field selector: {term!r}')
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
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise api_error(422, 'Invalid', f'the server rejected our request due to an error in our request: {exc}')


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
    Column('Restarts', lambda p: sum(s.get('restartCount', 0) for s in p.get('status', {}).get('containerStatuses') or []),
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
        result.append(CustomResource(resource, info, crd_columns(version), schema))
    return result


def declare_crd(emulator: KubernetesEmulator, crd: Mapping[str, Any]) -> list[kmock.resource]:
    """Serve the custom resources of a CRD object (without storing the CRD object itself)."""
    declared = []
    for custom in custom_resources(crd):
        emulator.resources[custom.resource] = custom.info
        emulator.custom_resources[custom.resource] = custom
        declared.append(custom.resource)
    return declared


def read_crds(folder: str | pathlib.Path) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition document in the folder's *.yaml / *.yml files."""
    paths = sorted([*pathlib.Path(folder).glob('*.yaml'), *pathlib.Path(folder).glob('*.yml')])
    documents = [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]
    return [doc for doc in documents if doc.get('kind') == 'CustomResourceDefinition']


def load_crds(emulator: KubernetesEmulator, folder: str | pathlib.Path) -> list[kmock.resource]:
    """Declare every CRD found in a folder such as the repo's crds/."""
    return [resource for crd in read_crds(folder) for resource in declare_crd(emulator, crd)]


def crd_established(crd: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The status a real server gives an accepted CRD (``kubectl wait --for=condition=Established``)."""
    conditions = [{'type': kind, 'status': 'True', 'reason': reason, 'message': message, 'lastTransitionTime': now}
                  for kind, reason, message in [
                      ('NamesAccepted', 'NoConflicts', 'no conflicts found'),
                      ('Established', 'InitialNamesAccepted', 'the initial names have been accepted')]]
    stored = [v['name'] for v in crd['spec']['versions'] if v.get('storage')]
    return {'acceptedNames': crd['spec']['names'], 'conditions': conditions, 'storedVersions': stored}


def openapi_document(served: Iterable[tuple[kmock.resource, kmock.ResourceInfo, Mapping[str, Any] | None]]) -> dict[str, Any]:
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
        returns = {'200': {'content': {'application/json': {'schema': {'$ref': f'#/components/schemas/{schema_name}'}}}}}
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
    """Which objects a list/watch/deletecollection request is about."""
    namespace: str | None = None
    name: str | None = None
    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    @classmethod
    def of(cls, request: kmock.Request) -> Selection:
        return cls(request.namespace, request.name,
                   tuple(parse_label_selector(request.params.get('labelSelector', ''))),
                   tuple(parse_field_selector(request.params.get('fieldSelector', ''))))

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


# Requests kept for assertions (emulator.requests); older ones are dropped to keep dispatch fast.
REQUEST_HISTORY = 8


@attrs.define(kw_only=True)
class KubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the semantics of a real API server (see the module docstring).

    Objects live in ``.objects`` (kmock's versioned store, keyed by resource, namespace, name).
    Write only through the HTTP API while serving: direct writes are not streamed to watchers.
    """

    # Optional: what the server does with a custom resource's body against its CRD schema
    # (pruning, defaulting, validation), e.g. promptopt.testing.admission.admit; ValueError means 422.
    admission: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    custom_resources: dict[kmock.resource, CustomResource] = attrs.field(factory=dict, init=False)
    _last_resource_version: int = attrs.field(default=0, init=False)
    _recent_events: dict[kmock.resource, collections.deque[WatchEvent]] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=RECENT_EVENTS_PER_RESOURCE)),
        init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        self.fallback['get /openapi/v3'] << self._serve_openapi_paths
        self.fallback['get', re.compile(r'/openapi/v3/(api|apis/[^/]+)/[^/]+')] << self._serve_openapi_group_version

    # --- request routing -------------------------------------------------------------------------

    @override
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's URL parser fails on the namespace collection; give it a parsable alias of that URL
        # (our own parser in _handle() reads the alias back as the namespaces collection).
        if raw_request.path.rstrip('/') == '/api/v1/namespaces':
            url = raw_request.rel_url
            # with_path() drops the query (?watch=true, ?labelSelector=...): carry it over.
            raw_request = raw_request.clone(rel_url=url.with_path(NAMESPACES_ALIAS).with_query(url.query))
        return await super().__call__(raw_request)

    @override
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        path = '/api/v1/namespaces' if request.url.path == NAMESPACES_ALIAS else request.url.path
        api_path = parse_api_path(path)
        if api_path is not None:
            request = self._reparsed(request, api_path)
        # kmock matches each request against every reaction by walking the whole request history, so a long
        # run (a benchmark, a 1,000-job test) slows down with every request served: keep only recent ones.
        for history in (self._requests, *(payload._requests for payload in self._payloads)):
            if len(history) > 2 * REQUEST_HISTORY:
                del history[:-REQUEST_HISTORY]
        # kmock's own _handle() writes objects before dispatching; our _serve_* fallbacks write instead.
        return await kmock.KubernetesScaffold._handle(self, request)

    def _reparsed(self, request: kmock.Request, api_path: ApiPath) -> kmock.Request:
        """The request with our K8s fields, also in the recorded requests (kmock matches them by identity)."""
        reparsed = attrs.evolve(
            request, resource=api_path.resource, namespace=api_path.namespace, name=api_path.name,
            subresource=api_path.subresource, action=guess_action(request.method.value, api_path, request.params))
        index = next(i for i in reversed(range(len(self._requests))) if self._requests[i] is request)
        self._requests[index] = reparsed
        return reparsed

    @override
    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if not isinstance(exc, kmock.KubernetesError):
            return await super()._render_error(exc)
        return aiohttp.web.json_response(
            {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure', 'code': exc.status,
             'reason': exc.reason, 'message': exc.message, 'details': exc.details or {}},
            status=exc.status)

    # --- discovery -------------------------------------------------------------------------------

    @override
    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        assert request.resource is not None
        group, version = request.resource.group, request.resource.version
        served = sorted((r for r in self.resources if r.group == group and r.version == version),
                        key=lambda r: str(r.plural))
        if not served:
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        return {'kind': 'APIResourceList', 'apiVersion': 'v1',
                'groupVersion': f'{group}/{version}' if group else version,
                'resources': [entry for r in served for entry in self._discovery_entries(r)]}

    def _discovery_entries(self, resource: kmock.resource) -> list[dict[str, Any]]:
        info = self.resources[resource]
        main = {'name': resource.plural, 'singularName': info.singular or '', 'namespaced': bool(info.namespaced),
                'kind': info.kind, 'verbs': sorted(info.verbs or STANDARD_VERBS)}
        main |= {'shortNames': sorted(info.shortnames)} if info.shortnames else {}
        main |= {'categories': sorted(info.categories)} if info.categories else {}
        subs = [{'name': f'{resource.plural}/{sub}', 'singularName': '', 'namespaced': bool(info.namespaced),
                 'kind': info.kind, 'verbs': SUBRESOURCE_VERBS} for sub in sorted(info.subresources)]
        return [main, *subs]

    @override
    async def _serve_server_version(self, request: kmock.Request) -> kmock.Payload:
        return {'major': '1', 'minor': '32', 'gitVersion': 'v1.32.0', 'platform': 'linux/amd64',
                'gitCommit': '', 'gitTreeState': 'clean', 'buildDate': '', 'goVersion': '', 'compiler': 'gc'}

    def _group_versions(self) -> set[tuple[str, str]]:
        return {(str(r.group), str(r.version)) for r in self.resources}

    async def _serve_openapi_paths(self, request: kmock.Request) -> kmock.Payload:
        prefixes = {(g, v): f'apis/{g}/{v}' if g else f'api/{v}' for g, v in self._group_versions()}
        return {'paths': {prefix: {'serverRelativeURL': f'/openapi/v3/{prefix}'} for prefix in sorted(prefixes.values())}}

    async def _serve_openapi_group_version(self, request: kmock.Request) -> kmock.Payload:
        *_, group, version = request.url.path.split('/')
        group = '' if group == 'api' else group
        if (group, version) not in self._group_versions():
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        customs = self.custom_resources
        return openapi_document((r, info, customs[r].schema if r in customs else None)
                                for r, info in self.resources.items() if (r.group, r.version) == (group, version))

    # --- reading ---------------------------------------------------------------------------------

    def _served(self, request: kmock.Request) -> kmock.resource:
        """The requested resource if it is served; of the subresources, /status and pods/binding are emulated."""
        resource = request.resource
        emulated = {'status', *(['binding'] if resource == PODS else [])}
        if (resource not in self.resources
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

    def _api_version(self, resource: kmock.resource) -> str:
        return f'{resource.group}/{resource.version}' if resource.group else str(resource.version)

    @override
    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        resource = self._served(request)
        objs = self._selected(resource, Selection.of(request))
        if wants_table(request):
            return self._as_table(request, objs)
        return {'apiVersion': self._api_version(resource), 'kind': f'{self.resources[resource].kind}List',
                'metadata': {'resourceVersion': str(self._last_resource_version)}, 'items': objs}

    @override
    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        self._served(request)
        obj = self._existing(request)
        return self._as_table(request, [obj]) if wants_table(request) else obj

    @override
    async def _serve_watch(self, request: kmock.Request) -> kmock.Payload:
        resource = self._served(request)
        selection = Selection.of(request)
        since = request.params.get('resourceVersion') or '0'
        timeout = float(request.params['timeoutSeconds']) if request.params.get('timeoutSeconds') else None
        async with self._lock:
            mark = await self._buses[resource].mark()
            initial = self._initial_watch_events(resource, selection, since, request.params)
        render: Callable[[dict[str, Any]], Any] = (
            (lambda obj: self._as_table(request, [obj])) if wants_table(request) else (lambda obj: obj))
        stream = self._watch_stream(resource, mark, initial, selection, render, timeout)
        return kmock.Response(headers=JSON_HEADERS, payload=stream)

    def _initial_watch_events(self, resource: kmock.resource, selection: Selection, since: str,
                              params: Mapping[str, str]) -> list[dict[str, Any]]:
        """What a watch sends first: the current objects, or what happened after ``since``."""
        if since == '0' or params.get('sendInitialEvents') == 'true':
            events: list[dict[str, Any]] = [{'type': 'ADDED', 'object': o} for o in self._selected(resource, selection)]
            if params.get('sendInitialEvents') == 'true':
                events.append({'type': 'BOOKMARK', 'object': {
                    'kind': self.resources[resource].kind, 'apiVersion': self._api_version(resource),
                    'metadata': {'resourceVersion': str(self._last_resource_version),
                                 'annotations': {'k8s.io/initial-events-end': 'true'}}}})
            return events
        recent = self._recent_events[resource]
        if len(recent) == recent.maxlen and int(since) < recent[0].resource_version - 1:
            gone = {'kind': 'Status', 'apiVersion': 'v1', 'status': 'Failure', 'code': 410, 'reason': 'Expired',
                    'message': f'too old resource version: {since}', 'metadata': {}}
            return [{'type': 'ERROR', 'object': gone}]
        seen = (selection.seen(e) for e in recent if e.resource_version > int(since))
        return [{'type': e.type, 'object': e.object} for e in seen if e is not None]

    async def _watch_stream(self, resource: kmock.resource, mark: kmock.BusMark[WatchEvent],
                            initial: list[dict[str, Any]], selection: Selection,
                            render: Callable[[dict[str, Any]], Any], timeout: float | None) -> AsyncIterator[Any]:
        yield b''  # send the headers now: clients wait for them before they start reading events
        bus = self._buses[resource]
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
                    event = await asyncio.wait_for(anext(live), remaining)
                except TimeoutError:
                    return
                seen = selection.seen(event)
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
        await self._buses[resource].put(event)

    async def _store(self, resource: kmock.resource, obj: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        """Write a new or changed object with a new resourceVersion; tell the watchers."""
        obj['metadata']['resourceVersion'] = self._next_resource_version()
        meta = obj['metadata']
        key = (resource, meta.get('namespace'), meta['name'])
        if key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj
        await self._publish(resource, 'MODIFIED' if previous else 'ADDED', obj, previous)
        if resource == CRDS:
            declare_crd(self, obj)
        return obj

    async def _remove(self, resource: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Delete an object from storage, then collect its garbage (dependents, namespace contents)."""
        meta = obj['metadata']
        self.objects[resource, meta.get('namespace'), meta['name']].delete()
        gone = copy.deepcopy(obj)
        gone['metadata']['resourceVersion'] = self._next_resource_version()
        await self._publish(resource, 'DELETED', gone, obj)
        await self._delete_dependents(meta['uid'], meta.get('namespace'))
        if resource == NAMESPACES:
            await self._delete_namespace_contents(meta['name'])
        return gone

    @override
    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        resource = self._served(request)
        body = request_body(request)
        if not isinstance(body, dict):
            raise api_error(400, 'BadRequest', 'the request body must be a JSON object')
        if request.subresource == 'binding':
            return await self._bind(request, body)
        async with self._lock:
            obj = self._new_object(resource, request.namespace, body)
            if self._current(resource, obj['metadata'].get('namespace'), obj['metadata']['name']) is not None:
                name = obj['metadata']['name']
                raise api_error(409, 'AlreadyExists', f'{resource_label(resource)} "{name}" already exists',
                                name=name, group=resource.group, kind=resource.plural)
            created = await self._store(resource, obj, None)
        return kmock.Response(status=201, headers=JSON_HEADERS, payload=created)

    async def _bind(self, request: kmock.Request, binding: dict[str, Any]) -> kmock.Payload:
        """pods/NAME/binding, as the scheduler binds: once, to a node; PodScheduled becomes True."""
        async with self._lock:
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
        return kmock.Response(status=201, headers=JSON_HEADERS,
                              payload={'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success',
                                       'code': 201})

    def _new_object(self, resource: kmock.resource, url_namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """The object as the server stores it at creation: identity, metadata, defaults, no status."""
        info = self.resources[resource]
        obj = copy.deepcopy(body)
        meta = obj.setdefault('metadata', {})
        for system_field in ('uid', 'resourceVersion', 'deletionTimestamp', 'deletionGracePeriodSeconds'):
            meta.pop(system_field, None)
        if info.namespaced:
            if url_namespace and meta.get('namespace') not in {None, url_namespace}:
                raise api_error(400, 'BadRequest', 'the namespace of the provided object does not match '
                                                   'the namespace sent on the request')
            meta['namespace'] = url_namespace or meta.get('namespace')
            if not meta['namespace']:
                raise api_error(400, 'BadRequest', 'a namespace is required for a namespaced resource')
        else:
            meta.pop('namespace', None)
        if not meta.get('name'):
            if not meta.get('generateName'):
                raise api_error(422, 'Invalid', f'{info.kind} is invalid: metadata.name: Required value: '
                                                'name or generateName is required')
            meta['name'] = self._generated_name(resource, meta.get('namespace'), meta['generateName'])
        now = format_timestamp(datetime.datetime.now(datetime.UTC))
        meta |= {'uid': str(uuid.uuid4()), 'creationTimestamp': now, 'generation': 1}
        obj['apiVersion'], obj['kind'] = self._api_version(resource), info.kind
        if 'status' in info.subresources:
            obj.pop('status', None)  # a create cannot set the status of a resource with a status subresource
        return self._admitted(resource, with_builtin_defaults(resource, obj, now))

    def _admitted(self, resource: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        custom = self.custom_resources.get(resource)
        if self.admission is None or custom is None or not custom.schema:
            return obj
        try:
            return self.admission(dict(custom.schema), obj)
        except ValueError as exc:
            name = obj['metadata']['name']
            # One cause per problem, "<field>: <message>", as the real server sends them (kubectl lists them).
            problems = getattr(exc, 'problems', None) or [str(exc)]
            causes = [{'reason': 'FieldValueInvalid', 'field': p.split(': ', 1)[0], 'message': p.split(': ', 1)[-1]}
                      for p in problems]
            raise api_error(422, 'Invalid', f'{custom.info.kind}.{resource.group} "{name}" is invalid: {exc}',
                            name=name, group=resource.group, kind=custom.info.kind, causes=causes)

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
        async with self._lock:
            current = self._current(resource, request.namespace, request.name or '')
            if current is None and content_type == 'application/apply-patch+yaml':  # server-side apply creates
                created = await self._store(resource, self._new_object(resource, request.namespace, body), None)
                return kmock.Response(status=201, headers=JSON_HEADERS, payload=created)
            current = self._existing(request)
            candidate = (body if request.method == kmock.method.PUT else
                         apply_json_patch(current, body) if content_type == 'application/json-patch+json' else
                         apply_merge_patch(current, without_patch_directives(body)))
            updated = self._updated(resource, current, candidate, request.subresource)
            if resource == SECRETS:
                fold_string_data(updated)
            if updated == current:
                return current  # a no-op write is not written: no new resourceVersion, no event
            stored = await self._store(resource, updated, current)
            if is_released(stored):
                await self._remove(resource, stored)
        return stored

    def _updated(self, resource: kmock.resource, current: dict[str, Any], candidate: Any,
                 subresource: str | None) -> dict[str, Any]:
        """Apply update semantics: optimistic locking, status subresource split, system fields, generation."""
        name = current['metadata']['name']
        if not isinstance(candidate, dict) or not isinstance(candidate.get('metadata', {}), dict):
            raise api_error(400, 'BadRequest', 'the patched or replaced object must be a JSON object')
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
        if resource == PODS and subresource is None and spec_of(updated).get('nodeName') != spec_of(current).get('nodeName'):
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
        options = dict(request_body(request) or {}, **request.params)
        async with self._lock:
            if request.name is None:  # deletecollection
                deleted = [await self._delete(resource, obj, options)
                           for obj in self._selected(resource, Selection.of(request))]
                return {'apiVersion': self._api_version(resource), 'kind': f'{self.resources[resource].kind}List',
                        'metadata': {'resourceVersion': str(self._last_resource_version)}, 'items': deleted}
            current = self._existing(request)
            check_preconditions(resource, current, options.get('preconditions') or {})
            return await self._delete(resource, current, options)

    async def _delete(self, resource: kmock.resource, obj: dict[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
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

    async def _delete_dependents(self, owner_uid: str, namespace: str | None) -> None:
        """Background cascading deletion: what the garbage collector does after an owner is gone."""
        for (resource, dependent_namespace, _), item in list(self.objects.items()):
            if item.deleted or (namespace is not None and dependent_namespace != namespace):
                continue
            obj = item.raw
            references = obj['metadata'].get('ownerReferences') or []
            if not any(ref.get('uid') == owner_uid for ref in references):
                continue
            remaining = [ref for ref in references if ref.get('uid') != owner_uid and self._uid_exists(ref.get('uid'))]
            if remaining:
                await self._store(resource, with_owner_references(obj, remaining), obj)
            else:
                await self._delete(resource, obj, {'propagationPolicy': 'Background'})

    def _uid_exists(self, uid: str | None) -> bool:
        return any(not item.deleted and item.raw['metadata'].get('uid') == uid for item in self.objects.values())

    async def _delete_namespace_contents(self, namespace: str) -> None:
        for (resource, obj_namespace, _), item in list(self.objects.items()):
            if obj_namespace == namespace and not item.deleted:
                await self._delete(resource, item.raw, {})


def request_body(request: kmock.Request) -> Any:
    """The JSON body, or a YAML one (server-side apply sends application/apply-patch+yaml)."""
    if 'protobuf' in header(request, 'Content-Type'):  # client-go then retries with JSON
        raise api_error(415, 'UnsupportedMediaType', 'the body of the request was in an unknown format: '
                                                     'only JSON and YAML are served')
    if request.data is not None:
        return request.data
    return yaml.safe_load(request.text) if request.text.strip() else None


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
    return bool(meta.get('deletionTimestamp')) and not meta.get('finalizers') and not meta.get('deletionGracePeriodSeconds')


def check_preconditions(resource: kmock.resource, obj: Mapping[str, Any], preconditions: Mapping[str, Any]) -> None:
    for field in ('uid', 'resourceVersion'):
        if preconditions.get(field) and preconditions[field] != obj['metadata'].get(field):
            raise conflict(resource, obj['metadata']['name'], f'Precondition failed: {field} in precondition: '
                                                              f'{preconditions[field]}, {field} in object meta: '
                                                              f'{obj["metadata"].get(field)}')


def with_owner_references(obj: Mapping[str, Any], references: list[Any]) -> dict[str, Any]:
    changed = copy.deepcopy(dict(obj))
    changed['metadata']['ownerReferences'] = references
    return changed


# ------------------------------------------------------------------------------------------------
# A running cluster for synchronous tests, subprocesses and kubectl.

class EmulatedCluster(ClusterApi):
    """The emulator on 127.0.0.1 in a background thread with its own event loop, plus a kubeconfig.

    Use as a context manager. On start it serves the CRDs of ``crds`` (a folder, default: the
    repo's crds/) by creating them through the API, and creates the ``default`` namespace.
    ``admission`` (e.g. promptopt.testing.admission.admit) makes custom resources pruned,
    defaulted and validated against their CRD schema on every write.
    """

    def __init__(self, crds: str | pathlib.Path | None = REPO_CRDS, *, port: int = 0,
                 kubeconfig: str | pathlib.Path | None = None, namespace: str = 'default',
                 admission: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None) -> None:
        super().__init__('http://127.0.0.1:0', namespace=namespace)
        self.emulator = KubernetesEmulator(admission=admission)
        self._crds_folder = pathlib.Path(crds) if crds is not None else None
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
            for crd in read_crds(self._crds_folder) if self._crds_folder and self._crds_folder.is_dir() else []:
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
    parser.add_argument('--crds', type=pathlib.Path, default=REPO_CRDS, help='a folder of CRD YAML files')
    parser.add_argument('--kubeconfig', type=pathlib.Path, required=True, help='where to write the kubeconfig')
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with EmulatedCluster(args.crds, port=args.port, kubeconfig=args.kubeconfig) as cluster:
        print(f'Serving the emulated Kubernetes API at {cluster.url}; kubeconfig: {cluster.kubeconfig}', flush=True)
        while not stop.wait(0.2):  # a short wait lets the signal handlers run
            pass


if __name__ == '__main__':
    main()
