#!/usr/bin/python3
"""labctl.py seed|reset-images|reset-limits|smoke - Keystone/Glance chores of test/e2e/lab.sh.

Run it through lab.sh (it passes the variables) with Debian's /usr/bin/python3, which has
keystoneauth1, requests and pika (the pyenv python3 on PATH does not).

seed          idempotent: projects, users, role grants, glance service + endpoints, registered
              limits; identity endpoints follow KEYSTONE_PORT. Writes $LAB_DIR/ids.env.
reset-images  delete every image owned by demo, attacker and other.
reset-limits  delete every project limit of demo, attacker and other (registered limits stay).
smoke         self-test of a running lab (see smoke()).
"""
import json
import os
import sys
import time
import uuid

import requests
from keystoneauth1 import session
from keystoneauth1.identity import v3

E = os.environ
K = E.get('KEYSTONE_URL') or E['LAB_KEYSTONE_URL']
TIMEOUT = 30
ORDINARY = ('demo', 'attacker', 'other')          # project name == user name


def sess(user, password, project=None, system=False):
    kw = dict(auth_url=K, username=user, password=password, user_domain_id='default')
    if system:
        kw['system_scope'] = 'all'
    else:
        kw.update(project_name=project, project_domain_id='default')
    return session.Session(auth=v3.Password(**kw), timeout=TIMEOUT)


def token(user, password, project=None, system=False):
    scope = {'system': {'all': True}} if system else {
        'project': {'name': project, 'domain': {'id': 'default'}}}
    body = {'auth': {'identity': {'methods': ['password'], 'password': {'user': {
        'name': user, 'domain': {'id': 'default'}, 'password': password}}}, 'scope': scope}}
    r = requests.post(K + '/auth/tokens', json=body, timeout=TIMEOUT)
    r.raise_for_status()
    return r.headers['X-Subject-Token']


# ------------------------------------------------------------------------------------- seed
def seed():
    s = sess('admin', E['ADMIN_PASSWORD'], 'admin')

    def get(path, **params):
        r = s.get(K + path, params=params)
        r.raise_for_status()
        return r.json()

    def post(path, body):
        r = s.post(K + path, json=body)
        r.raise_for_status()
        return r.json()

    def one(path, key, **params):
        found = get(path, **params)[key]
        return found[0] if found else None

    def ensure_project(name, desc):
        p = one('/projects', 'projects', name=name, domain_id='default')
        return (p or post('/projects', {'project': {
            'name': name, 'domain_id': 'default', 'description': desc}})['project'])['id']

    def ensure_user(name, password, project_id):
        u = one('/users', 'users', name=name, domain_id='default')
        if u:
            # the fixed password must hold even if someone changed it
            s.patch(K + '/users/' + u['id'], json={'user': {'password': password}}).raise_for_status()
            return u['id']
        return post('/users', {'user': {'name': name, 'password': password, 'domain_id': 'default',
                                        'default_project_id': project_id}})['user']['id']

    roles = {}

    def role(name):
        if name not in roles:
            r = one('/roles', 'roles', name=name)
            roles[name] = (r or post('/roles', {'role': {'name': name}})['role'])['id']
        return roles[name]

    def grant(project_id, user_id, name):
        s.put(K + '/projects/%s/users/%s/roles/%s' % (project_id, user_id, role(name))).raise_for_status()

    def grant_system(user_id, name):
        s.put(K + '/system/users/%s/roles/%s' % (user_id, role(name))).raise_for_status()

    def ensure_endpoints(service_id, url):
        out = {}
        for iface in ('public', 'internal', 'admin'):
            ep = one('/endpoints', 'endpoints', service_id=service_id, interface=iface)
            if ep is None:
                ep = post('/endpoints', {'endpoint': {'service_id': service_id, 'interface': iface,
                                                      'url': url, 'region_id': E['REGION']}})['endpoint']
            elif ep['url'] != url or ep.get('region_id') != E['REGION']:
                s.patch(K + '/endpoints/' + ep['id'], json={'endpoint': {
                    'url': url, 'region_id': E['REGION']}}).raise_for_status()
            out[iface] = ep['id']
        return out

    ids = {'ADMIN_PROJECT_ID': one('/projects', 'projects', name='admin', domain_id='default')['id'],
           'ADMIN_USER_ID': one('/users', 'users', name='admin', domain_id='default')['id']}
    ids['SERVICE_PROJECT_ID'] = ensure_project('service', 'service users (glance, enforcer)')
    for p in ORDINARY:
        ids[p.upper() + '_PROJECT_ID'] = ensure_project(p, 'ordinary project')
    for who in ('glance', 'enforcer'):
        uid = ensure_user(who, E[who.upper() + '_PASSWORD'], ids['SERVICE_PROJECT_ID'])
        ids[who.upper() + '_USER_ID'] = uid
        grant(ids['SERVICE_PROJECT_ID'], uid, 'admin')
        # a project-scoped token sees only its own project's limits: read them with system scope
        grant_system(uid, 'reader')
    for p in ORDINARY:
        uid = ensure_user(p, E[p.upper() + '_PASSWORD'], ids[p.upper() + '_PROJECT_ID'])
        ids[p.upper() + '_USER_ID'] = uid
        grant(ids[p.upper() + '_PROJECT_ID'], uid, 'member')
        grant(ids[p.upper() + '_PROJECT_ID'], uid, 'reader')

    # identity endpoints were created by `keystone-manage bootstrap`; keep them on our port
    ident = one('/services', 'services', type='identity')
    ensure_endpoints(ident['id'], K)

    svc = one('/services', 'services', type='image')
    svc_id = (svc or post('/services', {'service': {'name': 'glance', 'type': 'image',
                                                    'description': 'OpenStack Image'}})['service'])['id']
    ids['GLANCE_SERVICE_ID'] = svc_id
    eps = ensure_endpoints(svc_id, E['GLANCE_URL'])
    for iface, eid in eps.items():
        ids['GLANCE_%s_ENDPOINT_ID' % iface.upper()] = eid
    ids['GLANCE_ENDPOINT_ID'] = eps['public']

    for kv in E['LIMITS'].split():
        name, val = kv.split('=')
        val = int(val)
        rl = one('/registered_limits', 'registered_limits', service_id=svc_id,
                 region_id=E['REGION'], resource_name=name)
        if rl is None:
            post('/registered_limits', {'registered_limits': [{
                'service_id': svc_id, 'region_id': E['REGION'], 'resource_name': name,
                'default_limit': val}]})
        elif rl['default_limit'] != val:
            s.patch(K + '/registered_limits/' + rl['id'],
                    json={'registered_limit': {'default_limit': val}}).raise_for_status()

    out = os.path.join(E['LAB_DIR'], 'ids.env')
    with open(out + '.tmp', 'w') as f:
        for k in sorted(ids):
            f.write('LAB_%s=%s\n' % (k, ids[k]))
    os.replace(out + '.tmp', out)


# ------------------------------------------------------------------------------------- resets
def reset_images():
    glance = E['LAB_GLANCE_URL']
    total = 0
    for p in ORDINARY:
        tok = token(p, E['LAB_%s_PASSWORD' % p.upper()], p)
        h = {'X-Auth-Token': tok}
        pid = E['LAB_%s_PROJECT_ID' % p.upper()]
        url = glance + '/v2/images?limit=1000&owner=' + pid
        ids = []
        while url:   # all statuses are listed by default (deactivated too for the owner)
            r = requests.get(url, headers=h, timeout=TIMEOUT)
            r.raise_for_status()
            body = r.json()
            ids += [i['id'] for i in body['images'] if i.get('owner') == pid]
            url = glance + body['next'] if body.get('next') else None
        for iid in ids:
            r = requests.delete(glance + '/v2/images/' + iid, headers=h, timeout=TIMEOUT)
            if r.status_code == 403:   # protected
                requests.patch(glance + '/v2/images/' + iid, headers=dict(h, **{
                    'Content-Type': 'application/openstack-images-v2.1-json-patch'}),
                    data=json.dumps([{'op': 'replace', 'path': '/protected', 'value': False}]),
                    timeout=TIMEOUT)
                r = requests.delete(glance + '/v2/images/' + iid, headers=h, timeout=TIMEOUT)
            if r.status_code not in (204, 404):
                sys.exit('DELETE image %s (%s) -> %s %s' % (iid, p, r.status_code, r.text[:200]))
        total += len(ids)
    print('deleted %d images of %s' % (total, ', '.join(ORDINARY)))


def reset_limits():
    s = sess('admin', E['LAB_ADMIN_PASSWORD'], system=True)
    n = 0
    for p in ORDINARY:
        r = s.get(K + '/limits', params={'project_id': E['LAB_%s_PROJECT_ID' % p.upper()]})
        r.raise_for_status()
        for lim in r.json()['limits']:
            s.delete(K + '/limits/' + lim['id']).raise_for_status()
            n += 1
    print('deleted %d project limits of %s' % (n, ', '.join(ORDINARY)))


# ------------------------------------------------------------------------------------- smoke
def smoke():
    """demo creates an image on the glance port; it is listed; the oracle's usage grows by 1;
    the enforcer (system scope) sees the 4 registered limits; image.create arrives on exchange
    glance / routing key notifications.info. The image is deleted afterwards."""
    import pika
    glance, oracle = E['LAB_GLANCE_URL'], E['LAB_GLANCE_ORACLE_URL']
    demo = {'X-Auth-Token': token('demo', E['LAB_DEMO_PASSWORD'], 'demo')}

    def usage():
        r = requests.get(oracle + '/v2/info/usage', headers=demo, timeout=TIMEOUT)
        r.raise_for_status()
        return r.json()['usage']['image_count_total']['usage']

    conn = pika.BlockingConnection(pika.URLParameters(E['LAB_AMQP_URL']))
    ch = conn.channel()
    # oslo.messaging's own declaration: topic, durable=False, auto_delete=False
    ch.exchange_declare('glance', exchange_type='topic', durable=False, auto_delete=False)
    q = ch.queue_declare('', exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(q, 'glance', routing_key='notifications.info')
    try:
        before = usage()
        name = 'smoke-' + uuid.uuid4().hex[:8]
        r = requests.post(glance + '/v2/images', headers=demo, timeout=TIMEOUT, json={
            'name': name, 'disk_format': 'raw', 'container_format': 'bare'})
        assert r.status_code == 201, 'POST /v2/images -> %s %s' % (r.status_code, r.text[:300])
        iid = r.json()['id']
        print('POST /v2/images as demo -> 201, id %s' % iid)
        listed = [i['id'] for i in requests.get(glance + '/v2/images', headers=demo,
                                                 timeout=TIMEOUT).json()['images']]
        assert iid in listed, 'image not listed'
        print('GET /v2/images lists it')
        after = usage()
        assert after == before + 1, 'oracle usage %s -> %s' % (before, after)
        print('oracle GET /v2/info/usage: image_count_total %d -> %d' % (before, after))
        sysh = {'X-Auth-Token': token('enforcer', E['LAB_ENFORCER_PASSWORD'], system=True)}
        rl = requests.get(K + '/registered_limits', headers=sysh, timeout=TIMEOUT).json()['registered_limits']
        got = sorted('%s=%s' % (x['resource_name'], x['default_limit']) for x in rl)
        assert len(got) == 4, got
        print('registered limits (enforcer, system scope): %s' % ' '.join(got))
        event, deadline = None, time.time() + 15
        while time.time() < deadline:
            m, _, body = ch.basic_get(q, auto_ack=True)
            if m is None:
                time.sleep(0.1)
                continue
            msg = json.loads(json.loads(body)['oslo.message'])
            if msg['event_type'] == 'image.create' and msg['payload']['id'] == iid:
                event = (m.routing_key, msg)
                break
        assert event, 'no image.create notification within 15 s'
        print('notification %s on glance/%s, owner %s' % (event[1]['event_type'], event[0],
                                                          event[1]['payload']['owner']))
        requests.delete(glance + '/v2/images/' + iid, headers=demo, timeout=TIMEOUT)
        print('smoke OK')
    finally:
        conn.close()


if __name__ == '__main__':
    cmds = {'seed': seed, 'reset-images': reset_images, 'reset-limits': reset_limits, 'smoke': smoke}
    if len(sys.argv) != 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]]()
