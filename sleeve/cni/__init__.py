"""CNI plugins (``sleeve-net``, ``sleeve-ipam``) and their installer; see ``spec.py`` for the
protocol, ``net.py`` for the attachment, ``ipam.py`` for addresses, ``api.py`` for the router
API they use. Short-lived processes: nothing here is imported by the router."""
