export PATH="/opt/coldclone/bin:$PATH"
[ -f ~/.bashrc ] && . ~/.bashrc
. /usr/lib/coldclone-live/console-session
