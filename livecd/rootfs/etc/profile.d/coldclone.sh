case ":$PATH:" in *:/opt/coldclone/bin:*) ;; *) PATH="/opt/coldclone/bin:$PATH" ;; esac
