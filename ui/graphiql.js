// GraphiQL wired to this server: queries and mutations over POST /graphql, subscriptions
// over graphql-transport-ws at /graphql/ws. The token is the dashboard's (sessionStorage, this
// tab) unless the Headers tab sets an Authorization header; GraphiQL passes the headers as the
// WebSocket's connection_init payload too, which is where the server looks for it.
/* global React, ReactDOM, GraphiQL */
(function main() {
  'use strict';

  const token = sessionStorage.getItem('hookline.token');
  const httpUrl = new URL('/graphql', window.location.href).toString();
  const wsUrl = new URL('/graphql/ws', window.location.href);
  wsUrl.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';

  const base = GraphiQL.createFetcher({ url: httpUrl, subscriptionUrl: wsUrl.toString() });

  function withToken(opts) {
    const headers = { ...((opts && opts.headers) || {}) };
    const has = Object.keys(headers).some((k) => k.toLowerCase() === 'authorization');
    if (token && !has) headers.Authorization = `Bearer ${token}`;
    return { ...(opts || {}), headers };
  }

  const fetcher = (params, opts) => base(params, withToken(opts));

  const params = new URLSearchParams(window.location.search);
  const defaultQuery = `# Hookline's GraphQL API. Ctrl-Enter runs the query under the cursor.
#
# ${token
    ? 'Your dashboard token is sent as "Authorization: Bearer …" (HTTP and WebSocket).'
    : 'Not signed in: put {"Authorization": "Bearer <token>"} in the Headers tab below,\n# or sign in on the dashboard (/) first.'}
# Mint a token with: hookline token --tenant acme --scope "read write publish"

query Destinations {
  destinations(first: 20) {
    totalCount
    nodes { id name url status enabled }
  }
}

# Subscriptions stream over /graphql/ws:
subscription LiveAttempts {
  deliveryAttempts { eventType outcome responseStatus durationMs destinationId }
}
`;

  const e = React.createElement;
  const logo = e(GraphiQL.Logo, null,
    e('span', { className: 'hookline-logo' },
      e('a', { href: '/' }, 'Hookline'),
      e('small', null, token ? 'token from the dashboard' : 'no token: see Headers')));

  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    e(GraphiQL, {
      fetcher,
      defaultQuery,
      query: params.get('query') || undefined,
      variables: params.get('variables') || undefined,
      defaultEditorToolsVisibility: !token,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
    }, logo),
  );
}());
