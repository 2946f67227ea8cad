# Installs the Debian package staged at /stage/package.deb and foobar.service,
# configures expose@foobar and reexpose@foobar as the README shows, and
# starts them.
set -e
dpkg -i /stage/package.deb >/dev/null
cp /stage/foobar.service /etc/systemd/system/
mkdir -p /etc/simpletcpunixrelay
echo CONNECT=127.0.0.1:8080 > /etc/simpletcpunixrelay/expose-foobar.env
printf 'LISTEN=127.0.0.1:8081\nCONNECT=/run/foobar-unix/socket\n' \
    > /etc/simpletcpunixrelay/reexpose-foobar.env
systemctl daemon-reload
systemctl start foobar.service simpletcpunixrelay-expose@foobar.service
systemctl start simpletcpunixrelay-reexpose@foobar.service
